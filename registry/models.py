"""The agent registry: who the agents are, whether they are reachable, how they prove it."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models

from registry.policy import EnrolmentPolicy

AGENT_ID_PATTERN = r"\A[a-z0-9][a-z0-9._-]{0,62}\Z"  # \Z: "$" would accept a trailing newline
agent_id_validator = RegexValidator(
    AGENT_ID_PATTERN,
    "Agent ids are 1-63 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit.",
)


class Connectivity(models.TextChoices):
    ONLINE = "online"
    OFFLINE = "offline"


class AdminState(models.TextChoices):
    ACTIVE = "active"
    DRAINING = "draining"
    DISABLED = "disabled"


class Transport(models.TextChoices):
    """How an agent gets its work: pushed to its MQTT inbox by the dispatcher, or claimed over HTTP by itself."""

    MQTT = "mqtt"
    HTTP = "http"


class Agent(models.Model):
    """A remote worker. Its id is the MQTT username, client id and certificate CN."""

    id = models.CharField(primary_key=True, max_length=63, validators=[agent_id_validator])
    name = models.CharField(max_length=200, blank=True)
    labels = models.JSONField(default=dict, blank=True, help_text="String key/value pairs used by label selectors.")
    capabilities = models.JSONField(default=list, blank=True, help_text="Task kinds or features this agent offers.")
    version = models.CharField(max_length=64, blank=True)
    max_concurrency = models.PositiveIntegerField(default=1)
    connectivity = models.CharField(max_length=8, choices=Connectivity.choices, default=Connectivity.OFFLINE)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    disconnect_reason = models.CharField(max_length=200, blank=True)
    admin_state = models.CharField(max_length=8, choices=AdminState.choices, default=AdminState.ACTIVE)
    transport = models.CharField(
        max_length=4,
        choices=Transport.choices,
        default=Transport.MQTT,
        help_text="mqtt: the dispatcher pushes tasks to its inbox; http: it claims them itself (never pushed).",
    )
    enrolled_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    metadata = models.JSONField(default=dict, blank=True)
    enrolment_policy = models.JSONField(
        null=True,
        blank=True,
        help_text="What the agent may claim about itself (registry.policy), copied from the bootstrap token it "
        "enrolled with; empty: not enrolled with a token (made by an operator), no limit on its hello.",
    )

    class Meta:
        db_table = "agents"
        ordering = ["id"]
        indexes = [
            models.Index(fields=["connectivity", "admin_state"], name="agents_status_idx"),
            models.Index(fields=["admin_state"], name="agents_admin_state_idx"),
            models.Index(fields=["last_seen_at"], name="agents_last_seen_idx"),
            models.Index(fields=["version"], name="agents_version_idx"),
            # The admin's live feed reads MAX(updated_at) every second (ops/live/feed.py): without it, a scan.
            models.Index(fields=["updated_at"], name="agents_updated_idx"),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def is_dispatchable(self) -> bool:
        return self.connectivity == Connectivity.ONLINE and self.admin_state == AdminState.ACTIVE


class CredentialKind(models.TextChoices):
    TOKEN = "token"  # noqa: S105  # nosec B105  # a credential kind, not a secret
    CERTIFICATE = "certificate"


class AgentCredential(models.Model):
    """A token (stored as a hash) or a client certificate (fingerprint and serial) of one agent."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="credentials")
    kind = models.CharField(max_length=12, choices=CredentialKind.choices)
    token_prefix = models.CharField(max_length=12, blank=True, help_text="First characters, to recognise a token.")
    token_hash = models.CharField(max_length=128, blank=True, unique=True, null=True)
    cert_fingerprint = models.CharField(max_length=95, blank=True, unique=True, null=True)
    cert_serial = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "agent_credentials"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["agent", "kind"], name="agent_credentials_agent_idx"),
            models.Index(fields=["created_at", "id"], name="agent_credentials_created_idx"),  # the admin list's order
        ]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(kind="token", token_hash__isnull=False)
                    | models.Q(kind="certificate", cert_fingerprint__isnull=False)
                ),
                name="agent_credential_has_secret",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} of {self.agent_id}"


class EnrolmentToken(models.Model):
    """A bootstrap secret (``aen_...``) an agent trades for its own token at ``POST /api/v1/agent/enrol``.

    Bound to one agent id (which it may then claim, even if the agent exists), or
    unbound (it may only create new agents). Stored as a hash, shown once. Its
    policy (``registry.policy``) limits the labels and capabilities an agent may
    claim with it; new tokens allow none.
    """

    name = models.CharField(max_length=100, blank=True)
    token_prefix = models.CharField(max_length=12)
    token_hash = models.CharField(max_length=64, unique=True)
    agent_id = models.CharField(max_length=63, blank=True, help_text="The only agent id it enrols; empty: any new id.")
    agent_id_prefix = models.CharField(
        max_length=32, blank=True, help_text="New agent ids must start with this (an unbound token); empty: any."
    )
    fixed_labels = models.JSONField(
        default=dict, blank=True, help_text="Labels always given to agents enrolled with it; they cannot change them."
    )
    allowed_labels = models.JSONField(
        default=dict,
        blank=True,
        help_text='Labels an agent may claim: key (or "*" for any other key) to a list of value patterns '
        '(globs: ["*"] any value). Empty: none.',
    )
    allowed_capabilities = models.JSONField(
        default=list, blank=True, help_text='Capability patterns an agent may offer (globs: ["*"] any). Empty: none.'
    )
    uses_left = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "enrolment_tokens"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name or 'enrolment token'} ({self.token_prefix}…)"

    @property
    def policy(self) -> EnrolmentPolicy:
        return EnrolmentPolicy(
            fixed_labels=self.fixed_labels,
            allowed_labels=self.allowed_labels,
            allowed_capabilities=self.allowed_capabilities,
            token_id=self.pk,
        )
