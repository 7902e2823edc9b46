"""The certificate pages, under the hosts URLs and names they have always had (``hosts:certificates`` ...)."""

from django.urls import path

from . import views

urlpatterns = [
    path("certificates/", views.certificate_list, name="certificates"),
    path("certificates/upload/", views.certificate_upload, name="certificate_upload"),
    path("certificates/<int:pk>/", views.certificate_detail, name="certificate_detail"),
    path("certificates/<int:pk>/remove/", views.certificate_remove, name="certificate_remove"),
    path("<int:host_pk>/tls/", views.certificate_assign, name="certificate_assign"),
]
