from django.db import migrations, models

PRUNE = "prune old records and files"


def create_schedule(apps, schema_editor):
    # Idempotent, as the guard's: re-running migrations keeps one row.
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=PRUNE,
        defaults={
            "func": "generation.tasks.prune",
            "schedule_type": "I",  # every `minutes`
            "minutes": 15,
            "repeats": -1,
            "cluster": "maintenance",
        },
    )


def delete_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=PRUNE).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("generation", "0003_queue_broadcast"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="imagejob",
            index=models.Index(fields=["status", "-finished_at"], name="job_status_finished"),
        ),
        migrations.RunPython(create_schedule, delete_schedule),
    ]
