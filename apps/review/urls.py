"""Pages under /review/ (every view declares its roles in apps/review/views.py)."""

from django.urls import path

from apps.review import views

app_name = "review"
urlpatterns = [
    path("", views.batch_list, name="batches"),
    path("new/", views.batch_create, name="batch_create"),
    path("batches/<int:pk>/", views.batch_detail, name="batch"),
    path("batches/<int:pk>/work/", views.work, name="work"),
    path("batches/<int:pk>/release/", views.release, name="release"),
    path("items/<int:pk>/", views.item_detail, name="item"),
    path("items/<int:pk>/verdict/", views.verdict, name="verdict"),
    path("items/<int:pk>/image.png", views.image, name="image"),
    path("items/<int:pk>/original/", views.original, name="original"),
    path("items/<int:pk>/original.png", views.original_image, name="original_image"),
    path("findings/<int:pk>/resolve/", views.resolve, name="resolve"),
]
