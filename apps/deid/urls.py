from django.urls import path

from apps.deid import views

app_name = "deid"
urlpatterns = [
    path("", views.run_list, name="runs"),
    path("runs/new/", views.run_start, name="run_start"),
    path("runs/<int:pk>/", views.run_detail, name="run"),
    path("runs/<int:pk>/progress/", views.run_progress, name="run_progress"),
    path("runs/<int:pk>/results/", views.run_results, name="run_results"),
    path("runs/<int:pk>/cancel/", views.run_cancel, name="run_cancel"),
    path("runs/<int:pk>/resume/", views.run_resume, name="run_resume"),
    path("runs/<int:pk>/retry/", views.run_retry, name="run_retry"),
    path("profiles/", views.profile_list, name="profiles"),
    path("profiles/new/", views.profile_new, name="profile_new"),
    path("profiles/<int:pk>/", views.profile_detail, name="profile"),
    path("reveal/", views.reveal, name="reveal"),
    path("reveal/lookup/", views.lookup, name="lookup"),
]
