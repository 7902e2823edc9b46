"""The host pages of the hosts app. migrator.host_urls serves them in the
`hosts` namespace beside the host pages that show migrations."""

from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.host_list, name="list"),
    path("add/", views.host_add, name="add"),
    path("<int:pk>/edit/", views.host_edit, name="edit"),
    path("<int:pk>/test/", views.host_test, name="test"),
    path("<int:pk>/refresh/", views.host_refresh, name="refresh"),
    path("", include("hosts.certificates.urls")),
]
