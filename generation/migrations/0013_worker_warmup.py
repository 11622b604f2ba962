from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("generation", "0012_a1111_options"),
    ]

    operations = [
        migrations.AddField(
            model_name="worker",
            name="warmup",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text=(
                    "Model -> what its start-up warm-up pass measured: seconds of fixed overhead, and per step "
                    "(a floor plus a share per megapixel). The ETA's default for a model with no finished jobs."
                ),
            ),
        ),
    ]
