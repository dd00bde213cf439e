"""Pages of the jobs app, mounted at /jobs/."""

from __future__ import annotations

from django.urls import path

from apps.jobs import views

app_name = "jobs"
urlpatterns = [
    path("", views.run_list, name="runs"),
    path("new/", views.run_new, name="run_new"),
    path("runs/<int:pk>/", views.run_detail, name="run_detail"),
    path("runs/<int:pk>/metrics.json", views.run_metrics, name="run_metrics"),
    path("runs/<int:pk>/cancel/", views.run_cancel, name="run_cancel"),
    path("runs/<int:pk>/requeue/", views.run_requeue, name="run_requeue"),
    path("runs/<int:pk>/resume/", views.run_resume, name="run_resume"),
    path("attempts/<int:pk>/script/", views.attempt_script, name="attempt_script"),
    path("cluster/", views.cluster, name="cluster"),
]
