from django.urls import path

from apps.datasets import views

app_name = "datasets"
urlpatterns = [
    path("", views.version_list, name="list"),
    path("build/", views.build, name="build"),
    path("lineage/", views.lineage_search, name="lineage"),
    path("lineage.csv", views.lineage_csv, name="lineage_csv"),
    path("lineage/withdraw/", views.consent_withdraw, name="withdraw"),
    path("lineage/reinstate/", views.consent_reinstate, name="reinstate"),
    path(
        "lineage/of/<str:kind>/<str:consumer_id>/", views.consumer_lineage, name="consumer_lineage"
    ),
    path(
        "lineage/of/<str:kind>/<str:consumer_id>/files.csv",
        views.consumer_lineage_csv,
        name="consumer_lineage_csv",
    ),
    path("<int:pk>/", views.version_detail, name="detail"),
    path("<int:pk>/status/", views.version_status, name="status"),
    path("<int:pk>/lineage/", views.version_lineage, name="version_lineage"),
    path("<int:pk>/verify/", views.version_verify, name="verify"),
    path("<int:pk>/verify/status/", views.verify_status, name="verify_status"),
    path("<int:pk>/cancel/", views.version_cancel, name="cancel"),
    path("<int:pk>/tokenizers/", views.tokenizer_new, name="tokenizer_new"),
    path("<int:pk>/tokenizers/status/", views.tokenizer_status, name="tokenizer_status"),
    path(
        "<int:pk>/tokenizers/<int:tokenizer_id>/cancel/",
        views.tokenizer_cancel,
        name="tokenizer_cancel",
    ),
    path("<int:pk>/labels/", views.annotation_list, name="annotations"),
    path("<int:pk>/labels/new/", views.annotation_new, name="annotation_new"),
]
