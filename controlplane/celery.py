"""The Celery app. Tasks live in each app's tasks.py; beat schedules are declared here."""

from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    # Seed 5.2: hash the day's audit chain head into WORM storage daily. Ten past midnight
    # (site time) so the previous day is complete.
    "audit-daily-digest": {
        "task": "apps.audit.tasks.write_daily_digest",
        "schedule": crontab(hour=0, minute=10),
    },
    # Re-verify the whole chain against the stored digests once a day, after the seal; the
    # result lands in the auditor's status panel and as an audit event.
    "audit-verify-chain": {
        "task": "apps.audit.tasks.verify_chain",
        "schedule": crontab(hour=0, minute=40),
    },
}
