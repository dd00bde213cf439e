"""A run may name the tokenizer its trainer reads with (``data.tokenizer``)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0002_run_watched_until")]

    operations = [
        migrations.AddField(
            model_name="trainingrun",
            name="tokenizer",
            field=models.CharField(
                blank=True,
                help_text="Empty: the dataset's own tokenizer.json, else byte-level ids.",
                max_length=500,
                verbose_name="tokenizer",
            ),
        ),
    ]
