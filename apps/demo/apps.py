from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The single-machine trial behind `make demo`: the cast of users and the main job."""

    name = "apps.demo"
    label = "demo"
