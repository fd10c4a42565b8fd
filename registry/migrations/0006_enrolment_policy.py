"""Enrolment policy (issue 13 item 9): what a bootstrap token lets an agent claim about itself.

Existing tokens keep enrolling agents: their ``labels`` become ``fixed_labels`` (given as
before), they let agents offer any capability (``["*"]``, as before), but no longer let
an agent claim labels of its own (``allowed_labels`` empty): labels route jobs, and a
generic token let anyone holding it enrol as ``role=db-primary``. An operator who wants
the old behaviour for one token sets its allowed labels to ``{"*": ["*"]}``. Agents
enrolled before this migration get no policy (like agents made by an operator).
"""

from typing import Any

from django.db import migrations, models


def existing_tokens_keep_their_capabilities(apps: Any, schema_editor: Any) -> None:
    # Every row here predates the policy: new tokens (the field's default) allow no capability.
    apps.get_model("registry", "EnrolmentToken").objects.update(allowed_capabilities=["*"])


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0005_agent_transport"),
    ]

    operations = [
        migrations.RenameField(model_name="enrolmenttoken", old_name="labels", new_name="fixed_labels"),
        migrations.AlterField(
            model_name="enrolmenttoken",
            name="fixed_labels",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="Labels always given to agents enrolled with it; they cannot change them.",
            ),
        ),
        migrations.AddField(
            model_name="enrolmenttoken",
            name="agent_id_prefix",
            field=models.CharField(
                blank=True,
                help_text="New agent ids must start with this (an unbound token); empty: any.",
                max_length=32,
            ),
        ),
        migrations.AddField(
            model_name="enrolmenttoken",
            name="allowed_labels",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text='Labels an agent may claim: key (or "*" for any other key) to a list of value patterns '
                '(globs: ["*"] any value). Empty: none.',
            ),
        ),
        migrations.AddField(
            model_name="enrolmenttoken",
            name="allowed_capabilities",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text='Capability patterns an agent may offer (globs: ["*"] any). Empty: none.',
            ),
        ),
        migrations.AddField(
            model_name="agent",
            name="enrolment_policy",
            field=models.JSONField(
                blank=True,
                null=True,
                help_text="What the agent may claim about itself (registry.policy), copied from the bootstrap token "
                "it enrolled with; empty: not enrolled with a token (made by an operator), no limit on its hello.",
            ),
        ),
        migrations.RunPython(existing_tokens_keep_their_capabilities, migrations.RunPython.noop, elidable=True),
    ]
