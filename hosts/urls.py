from django.urls import path

from . import cert_views, views

app_name = "hosts"
urlpatterns = [
    path("", views.host_list, name="list"),
    path("add/", views.host_add, name="add"),
    path("<int:pk>/", views.host_detail, name="detail"),
    path("<int:pk>/edit/", views.host_edit, name="edit"),
    path("<int:pk>/remove/", views.host_remove, name="remove"),
    path("<int:pk>/test/", views.host_test, name="test"),
    path("<int:pk>/refresh/", views.host_refresh, name="refresh"),
    path("vms/<int:pk>/", views.vm_detail, name="vm"),
    path("vms/<int:pk>/action/", views.vm_action, name="vm_action"),
    path("certificates/", cert_views.certificate_list, name="certificates"),
    path("certificates/upload/", cert_views.certificate_upload, name="certificate_upload"),
    path("certificates/<int:pk>/", cert_views.certificate_detail, name="certificate_detail"),
    path("certificates/<int:pk>/remove/", cert_views.certificate_remove, name="certificate_remove"),
    path("<int:host_pk>/tls/", cert_views.certificate_assign, name="certificate_assign"),
]
