from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import URLPattern, URLResolver, include, path
from django_rq import urls as rq_urls

from . import views
from .api import metrics
from .api import pages as api_pages
from .forms import LoginForm
from .roles import superuser_required


def superusers_only(patterns: list) -> list:
    """django-rq admits any staff user; its queues hold every job's
    arguments and can requeue or delete them, so only superusers get in."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            superusers_only(pattern.url_patterns)
        elif isinstance(pattern, URLPattern):
            pattern.callback = superuser_required(pattern.callback)
    return patterns


urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(authentication_form=LoginForm), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("hosts/", include("migrator.host_urls")),
    path("migrations/", include("migrator.migration_urls")),
    path("vms/<int:pk>/dirty-rate/", views.vm_dirty_rate, name="vm_dirty_rate"),
    path("account/tokens/", api_pages.tokens, name="api_tokens"),
    path("account/tokens/<int:pk>/revoke/", api_pages.revoke, name="api_token_revoke"),
    path("api/v1/", include("migrator.api.urls")),
    path("metrics", metrics.scrape, name="metrics"),
    path("admin/", admin.site.urls),
    path("django-rq/", include((superusers_only(list(rq_urls.urlpatterns)), rq_urls.app_name))),
]
