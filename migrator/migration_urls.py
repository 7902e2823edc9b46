from django.urls import path

from . import views, wizard

app_name = "migrator"
urlpatterns = [
    path("", views.migration_list, name="list"),
    path("new/", wizard.new_migration, name="new"),
    path("<int:pk>/", views.migration_detail, name="detail"),
    path("<int:pk>/cancel/", views.migration_cancel, name="cancel"),
]
