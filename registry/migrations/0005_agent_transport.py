from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0004_agents_updated_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="agent",
            name="transport",
            field=models.CharField(
                choices=[("mqtt", "Mqtt"), ("http", "Http")],
                default="mqtt",
                help_text="mqtt: the dispatcher pushes tasks to its inbox; http: it claims them itself (never pushed).",
                max_length=4,
            ),
        ),
    ]
