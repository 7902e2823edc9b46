"""/api/v1/: each resource module brings its own routes; the OpenAPI schema
and its docs (Swagger UI, Redoc) are served from the project."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from . import audit, certificates, fleet, hosts, migrations

app_name = "api"
urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    *hosts.urlpatterns,
    *migrations.urlpatterns,
    *fleet.urlpatterns,
    *audit.urlpatterns,
    *certificates.urlpatterns,
]
