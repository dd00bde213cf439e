"""The jobs app: training runs and their attempts on the cluster (issue 7, seed 8.3)."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class JobsConfig(AppConfig):
    name = "apps.jobs"
    label = "jobs"
    verbose_name = _("Training runs")

    def ready(self) -> None:
        from django.conf import settings
        from django.urls import reverse

        from apps.core import navigation
        from apps.datasets import registry
        from apps.jobs import services
        from apps.jobs.access import READ_ROLES

        navigation.register(
            "jobs",
            _("Training runs"),
            "jobs:runs",
            READ_ROLES,
            order=500,
            summary=services.overview,
        )
        navigation.register(
            "cluster",
            _("Cluster"),
            "jobs:cluster",
            READ_ROLES,
            order=510,
            summary=services.cluster_overview,
        )
        registry.register_consumer(
            "jobs.trainingrun",
            _("Training run"),
            url=lambda pk: reverse("jobs:run_detail", args=[int(pk)]),
        )
        # controlplane/celery.py is shared, so the reconciler's beat entry is added here.
        from controlplane.celery import app

        app.conf.beat_schedule["jobs-reconcile"] = {
            "task": "apps.jobs.tasks.reconcile",
            "schedule": float(getattr(settings, "JOBS_RECONCILE_SECONDS", 15)),
        }
