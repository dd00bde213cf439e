"""Pages of the data map, mounted at /inventory/."""

from django.urls import path

from apps.inventory import views

app_name = "inventory"
urlpatterns = [
    path("", views.source_list, name="sources"),
    path("sources/new/", views.source_create, name="source_create"),
    path("sources/<int:pk>/", views.source_detail, name="source_detail"),
    path("sources/<int:pk>/edit/", views.source_edit, name="source_edit"),
    path("sources/<int:pk>/scan/", views.source_scan, name="source_scan"),
    path("sources/<int:pk>/qa/", views.source_qa, name="source_qa"),
    path("import/", views.csv_import, name="csv_import"),
    path("data_inventory.csv", views.csv_export, name="csv_export"),
    path("batches/<int:pk>/", views.batch_detail, name="batch_detail"),
    path("batches/<int:pk>/progress/", views.batch_progress, name="batch_progress"),
    path("batches/<int:pk>/cancel/", views.batch_cancel, name="batch_cancel"),
    path("batches/<int:pk>/qa/", views.batch_qa, name="batch_qa"),
    path("batches/<int:pk>/qa/run/", views.batch_rerun_qa, name="batch_rerun_qa"),
    path("files/", views.file_list, name="files"),
    path("files/<int:pk>/exclude/", views.file_exclude, name="file_exclude"),
    path("files/<int:pk>/include/", views.file_include, name="file_include"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard.json", views.dashboard_json, name="dashboard_json"),
]
