from django.urls import path

from . import views

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
]
