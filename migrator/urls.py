from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("hosts/", include("migrator.host_urls")),
    path("migrations/", include("migrator.migration_urls")),
    path("vms/<int:pk>/dirty-rate/", views.vm_dirty_rate, name="vm_dirty_rate"),
    path("admin/", admin.site.urls),
    path("django-rq/", include("django_rq.urls")),
]
