"""What an agent may say about itself: the enrolment policy of the bootstrap token it enrolled with.

Labels and capabilities route jobs (a job targets ``role=db-primary``, or agents
offering ``deploy``), so an agent that could name its own would receive another
role's payloads. A bootstrap token therefore carries a policy, after AWS IoT
provisioning templates and Salt's autosign grains:

- ``fixed_labels``: always applied; the agent cannot drop them or give them another value;
- ``allowed_labels``: label key -> value patterns the agent may claim (``fnmatch`` globs:
  ``["*"]`` any value, ``["eu-*"]``, ``["r1", "r2"]``); the key ``"*"`` covers keys not
  listed (``{"*": ["*"]}`` lets it claim anything); a listed key wins over ``"*"``, so
  ``{"*": ["*"], "role": []}`` lets it claim anything but ``role``;
- ``allowed_capabilities``: capability patterns it may offer (``["*"]`` any).

Empty means nothing: a new token lets an agent claim no label and no capability.
The policy is copied onto the agent when it enrols (``Agent.enrolment_policy``):
its later MQTT hellos stay within it, whatever happens to the token. Operators set
any labels they like (admin, API); an agent neither adds nor removes a label its
policy does not let it claim.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

ANY_KEY = "*"
LABEL_KEY_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9./-]{0,62}\Z")  # as the API's label keys
CAPABILITY_PATTERN = re.compile(r"\A[A-Za-z0-9*?\[\]][A-Za-z0-9._:*?\[\]!-]{0,63}\Z")  # a capability name, globbed
MAX_PATTERNS = 100
MAX_PATTERN_CHARS = 200


class PolicyError(ValueError):
    """A policy that cannot be stored (bad key, pattern or shape); ``field`` names the part at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Refusal:
    """One thing an agent claimed that its policy does not allow: the request field and why."""

    field: str  # "labels", "capabilities" or "agent_id"
    message: str


@dataclass(frozen=True)
class Restricted:
    """What an agent's report becomes under its policy, and what was left out."""

    labels: dict[str, str]
    capabilities: list[str]
    refused_labels: dict[str, str] = field(default_factory=dict)
    refused_capabilities: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EnrolmentPolicy:
    fixed_labels: Mapping[str, str] = field(default_factory=dict)
    allowed_labels: Mapping[str, list[str]] = field(default_factory=dict)
    allowed_capabilities: list[str] = field(default_factory=list)
    token_id: int | None = None  # the token it came from, for people reading the agent's record

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EnrolmentPolicy:
        return cls(
            fixed_labels=dict(data.get("fixed_labels") or {}),
            allowed_labels={key: list(values) for key, values in (data.get("allowed_labels") or {}).items()},
            allowed_capabilities=list(data.get("allowed_capabilities") or []),
            token_id=data.get("token"),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "token": self.token_id,
            "fixed_labels": dict(self.fixed_labels),
            "allowed_labels": {key: list(values) for key, values in self.allowed_labels.items()},
            "allowed_capabilities": list(self.allowed_capabilities),
        }

    def may_claim_label(self, key: str, value: str) -> bool:
        if key in self.fixed_labels:
            return self.fixed_labels[key] == value
        patterns = self.allowed_labels.get(key, self.allowed_labels.get(ANY_KEY, []))
        return any(fnmatchcase(value, pattern) for pattern in patterns)

    def may_offer(self, capability: str) -> bool:
        return any(fnmatchcase(capability, pattern) for pattern in self.allowed_capabilities)

    def refusals(self, labels: Mapping[str, str], capabilities: Iterable[str]) -> list[Refusal]:
        """Why an enrolment asking for these labels and capabilities is refused (empty: it is not)."""
        found: list[Refusal] = []
        for key, value in labels.items():
            if key in self.fixed_labels and self.fixed_labels[key] != value:
                message = f"label {key!r} is fixed to {self.fixed_labels[key]!r} by this enrolment token"
                found.append(Refusal("labels", message))
            elif not self.may_claim_label(key, value):
                found.append(Refusal("labels", f"this enrolment token does not allow the label {key}={value!r}"))
        for capability in capabilities:
            if not self.may_offer(capability):
                found.append(Refusal("capabilities", f"this enrolment token does not allow capability {capability!r}"))
        return found

    def restrict(
        self, current: Mapping[str, str], reported_labels: Mapping[str, str], reported_capabilities: Iterable[str]
    ) -> Restricted:
        """An agent's report (its hello) within the policy.

        The agent's labels become what it reported and may claim, plus the labels it
        may not claim as they are now (set by an operator: the agent can neither
        remove nor change them), plus the fixed ones.
        """
        kept_by_operator = {key: value for key, value in current.items() if not self.may_claim_label(key, value)}
        claimed = {key: value for key, value in reported_labels.items() if self.may_claim_label(key, value)}
        refused = {key: value for key, value in reported_labels.items() if key not in claimed}
        refused = {key: value for key, value in refused.items() if kept_by_operator.get(key) != value}
        capabilities = [capability for capability in reported_capabilities if self.may_offer(capability)]
        return Restricted(
            labels={**claimed, **kept_by_operator, **self.fixed_labels},
            capabilities=capabilities,
            refused_labels=refused,
            refused_capabilities=[item for item in reported_capabilities if item not in capabilities],
        )


def clean_fixed_labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise PolicyError("fixed_labels", "Fixed labels are an object of label key to value.")
    for key, label in value.items():
        _check_key("fixed_labels", key, allow_any=False)
        if not isinstance(label, str) or len(label) > MAX_PATTERN_CHARS or not _storable(label):
            raise PolicyError("fixed_labels", f"The value of {key!r} is a string of at most {MAX_PATTERN_CHARS}.")
    return dict(value)


def clean_allowed_labels(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise PolicyError("allowed_labels", 'Allowed labels are an object of label key (or "*") to a list of patterns.')
    for key, patterns in value.items():
        _check_key("allowed_labels", key, allow_any=True)
        _check_patterns("allowed_labels", patterns, where=f"of {key!r}")
    return {key: list(patterns) for key, patterns in value.items()}


def clean_allowed_capabilities(value: Any) -> list[str]:
    _check_patterns("allowed_capabilities", value, where="")
    for pattern in value:
        if not CAPABILITY_PATTERN.match(pattern):
            raise PolicyError("allowed_capabilities", f"{pattern!r} is not a capability name or glob pattern.")
    return list(value)


def _check_key(field_name: str, key: Any, *, allow_any: bool) -> None:
    if allow_any and key == ANY_KEY:
        return
    if not isinstance(key, str) or not LABEL_KEY_PATTERN.match(key):
        raise PolicyError(field_name, f"{str(key)[:80]!r} is not a label key.")


def _check_patterns(field_name: str, patterns: Any, *, where: str) -> None:
    subject = f"The patterns {where}".replace("  ", " ").strip() if where else "The patterns"
    if not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS:
        raise PolicyError(field_name, f"{subject} are a list of at most {MAX_PATTERNS} strings.")
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_CHARS or not _storable(pattern):
            raise PolicyError(field_name, f"{subject} are non-empty strings of at most {MAX_PATTERN_CHARS} characters.")


def _storable(text: str) -> bool:
    """No NUL and no lone surrogate: PostgreSQL's jsonb stores neither (the MQTT protocol's rule too)."""
    return "\x00" not in text and text.encode("utf-8", "surrogatepass").decode("utf-8", "replace") == text
