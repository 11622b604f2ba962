from django.db import migrations

GUARD = "expire stuck jobs"


def create_schedule(apps, schema_editor):
    # Idempotent: re-running migrations (or a schedule edited in admin) keeps one row.
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=GUARD,
        defaults={
            "func": "generation.tasks.expire_stuck_jobs",
            "schedule_type": "I",  # every `minutes`
            "minutes": 1,
            "repeats": -1,
            "cluster": "maintenance",
        },
    )


def delete_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=GUARD).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("generation", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedule, delete_schedule)]
