"""The `hosts` URL namespace: the pages of the hosts app, and the host and VM
pages that show migrations, which migrator serves since hosts never imports
the migration records."""

from django.urls import include, path

from . import host_pages
from .fleet import views as fleet_views

app_name = "hosts"
urlpatterns = [
    path("", include("hosts.urls")),
    path("<int:pk>/", host_pages.host_detail, name="detail"),
    path("<int:pk>/remove/", host_pages.host_remove, name="remove"),
    path("<int:pk>/evacuate/", fleet_views.evacuate, name="evacuate"),
    path("<int:pk>/move/", fleet_views.bulk, name="bulk"),
    path("<int:pk>/leave-maintenance/", fleet_views.leave_maintenance, name="leave_maintenance"),
    path("vms/<int:pk>/", host_pages.vm_detail, name="vm"),
    path("vms/<int:pk>/action/", host_pages.vm_action, name="vm_action"),
]
