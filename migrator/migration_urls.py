from django.urls import path

from . import history_views, views, wizard
from .fleet import views as fleet_views

app_name = "migrator"
urlpatterns = [
    path("", history_views.history, name="list"),
    path("export.csv", history_views.export_csv, name="export_csv"),
    path("export.json", history_views.export_json, name="export_json"),
    path("audit/", history_views.audit_log, name="audit"),
    path("new/", wizard.new_migration, name="new"),
    path("<int:pk>/", views.migration_detail, name="detail"),
    path("<int:pk>/cancel/", views.migration_cancel, name="cancel"),
    path("<int:pk>/action/", views.migration_action, name="action"),
    path("<int:pk>/resume/", views.migration_resume, name="resume"),
    path("<int:pk>/settle/", views.migration_settle, name="settle"),
    path("batches/<int:pk>/", fleet_views.batch_detail, name="batch"),
    path("batches/<int:pk>/cancel/", fleet_views.batch_cancel, name="batch_cancel"),
]
