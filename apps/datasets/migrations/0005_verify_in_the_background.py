"""Verification checks run on a worker: status, progress in bytes, heartbeat, finish time.

Checks made before this migration ran inside the request and finished there, so they are
``done``; new checks start ``queued``. ``ok`` is None until a check is done.
"""

from django.db import migrations, models

STATUS_CHOICES = [
    ("queued", "Queued"),
    ("running", "Running"),
    ("done", "Done"),
    ("failed", "Failed"),
]


class Migration(migrations.Migration):
    dependencies = [("datasets", "0004_reinstall_sqlite_triggers")]

    operations = [
        migrations.AddField(
            model_name="verifycheck",
            name="status",
            field=models.CharField(choices=STATUS_CHOICES, default="done", max_length=8),
        ),
        migrations.AlterField(
            model_name="verifycheck",
            name="status",
            field=models.CharField(choices=STATUS_CHOICES, default="queued", max_length=8),
        ),
        migrations.AlterField(
            model_name="verifycheck", name="ok", field=models.BooleanField(null=True)
        ),
        migrations.AddField(
            model_name="verifycheck", name="bytes_done", field=models.BigIntegerField(default=0)
        ),
        migrations.AddField(
            model_name="verifycheck", name="bytes_total", field=models.BigIntegerField(default=0)
        ),
        migrations.AddField(
            model_name="verifycheck",
            name="heartbeat_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="verifycheck",
            name="finished_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="verifycheck",
            name="error",
            field=models.CharField(blank=True, max_length=300),
        ),
    ]
