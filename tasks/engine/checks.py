"""What a submission is checked for before it becomes a job: the rules the API, the admin and any caller share.

``tasks.actions.submit_job`` enforces them and ``tasks.actions.preview_job`` reports
them as warnings, so the admin's Launch and ``POST /api/v1/jobs/`` refuse exactly the
same jobs. The rules, in the order they are checked:

1. **Fleet-wide only when explicit.** A job with an empty target (no agent ids, no
   labels, no capabilities) would go to every agent of the fleet (mode ``each``) or to
   any agent (mode ``any``): refused unless the spec says ``target_all``. Both modes,
   so that a misspelt or forgotten target never widens a job silently. ``target_all``
   with a target is refused too: it would mean two different things.
2. **A target that matches no agent** makes a job with no tasks (mode ``each``) or
   tasks that wait for an agent that may never come (mode ``any``): refused unless the
   job is ``continuous`` (agents that match later get their task) or the spec says
   ``allow_no_agents``. Disabled agents do not count.
3. **The kind against the agents' capabilities.** An agent that declares
   capabilities and not the job's kind will fail its task. Mode ``each``: refused
   when any matched agent is such an agent; mode ``any``: refused when no matched
   agent offers the kind and none is unknown. Agents that declare no capabilities at
   all are *unknown*, never counted as certain failures. ``allow_unsupported_kind``
   launches anyway.

The preview never refuses for 2 and 3: it warns (``Warning``); rule 1 is a property of
the specification and refused by both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aegis_site.core.errors import DomainError, InvalidTransition
from registry.models import Agent
from tasks.engine.submit import JobSpec
from tasks.models import JobMode

LISTED_AGENTS = 20  # agent ids named in a message; the warning's list holds up to 1000

TARGET_REQUIRED = "target_required"
TARGET_ALL_WITH_TARGET = "target_all_with_target"
NO_MATCHING_AGENT = "no_matching_agent"
KIND_NOT_OFFERED = "kind_not_offered"
KIND_UNKNOWN = "kind_unknown"
FLEET_WIDE = "fleet_wide"

# Fields of JobSpec that answer the checks and are not part of the job: left out of the fingerprint.
_NOT_THE_JOB = ("allow_no_agents", "allow_unsupported_kind", "idempotency_key")


class SpecRefused(DomainError):
    """The submission breaks a rule above (HTTP 400 on ``field``, with its own ``code`` and message)."""

    def __init__(self, code: str, field: str, message: str, agents: Sequence[str] = (), answer: str = "") -> None:
        super().__init__(f"{message} {answer}" if answer else message)
        self.reason = message  # without the API's answer (the admin names its checkbox instead)
        self.code = code
        self.field = field
        self.agents = list(agents)
        self.details = {"agents": self.agents[:1000]} if agents else {}


@dataclass(frozen=True)
class Warning:  # a preview's warning, not the builtin's category
    code: str
    message: str
    agents: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "agents": list(self.agents[:1000])}


@dataclass(frozen=True)
class Assessment:
    """What the rules say about a spec and the agents its target matches now."""

    warnings: list[Warning]
    refusal: SpecRefused | None  # the first rule the submission breaks, after the allow_* answers


def _named(agent_ids: Sequence[str]) -> str:
    shown = ", ".join(agent_ids[:LISTED_AGENTS])
    more = len(agent_ids) - LISTED_AGENTS
    return f"{shown} and {more} more" if more > 0 else shown


def describe_target(spec: JobSpec) -> str:
    parts = []
    if spec.target_agent_ids:
        parts.append(f"agent ids {_named(spec.target_agent_ids)}")
    if spec.target_labels:
        parts.append(f"labels {json.dumps(spec.target_labels, ensure_ascii=False, sort_keys=True)}")
    if spec.target_capabilities:
        parts.append(f"capabilities {', '.join(spec.target_capabilities)}")
    return "; ".join(parts) if parts else "every agent of the fleet"


def check_target(spec: JobSpec) -> None:
    """Rule 1: refuse an empty target without ``target_all`` and ``target_all`` with a target."""
    if spec.untargeted and not spec.target_all:
        raise SpecRefused(
            TARGET_REQUIRED,
            "target_all",
            "The job has no target (no agent ids, labels or capabilities): it would go to every agent of the "
            'fleet. Give a target, or send "target_all": true to mean every agent.',
        )
    if spec.target_all and not spec.untargeted:
        raise SpecRefused(
            TARGET_ALL_WITH_TARGET,
            "target_all",
            '"target_all": true means every agent of the fleet; it cannot be combined with a target '
            "(agent ids, labels or capabilities).",
        )


def assess(spec: JobSpec, agents: Sequence[Agent]) -> Assessment:
    """Rules 2 and 3 for ``spec`` and the (not disabled) agents its target matches now; rule 1 is checked first."""
    check_target(spec)
    warnings: list[Warning] = []
    refusal: SpecRefused | None = None
    ids = [agent.pk for agent in agents]
    if spec.target_all:
        warnings.append(Warning(FLEET_WIDE, f"The job targets every agent of the fleet ({len(ids)} now)."))
    if not ids:
        message = f"The target matches no agent: {describe_target(spec)}."
        if spec.continuous:
            message += " The job is continuous: agents that match later get a task."
        elif spec.mode == JobMode.EACH:
            message += " The job would have no tasks."
        else:
            message += " Its tasks would wait until an agent matches."
        warnings.append(Warning(NO_MATCHING_AGENT, message))
        if not (spec.continuous or spec.allow_no_agents):
            refusal = SpecRefused(
                NO_MATCHING_AGENT,
                "allow_no_agents",
                message,
                answer='Send "allow_no_agents": true to launch it anyway.',
            )
        return Assessment(warnings, refusal)
    unknown = [agent.pk for agent in agents if not agent.capabilities]
    offering = [agent.pk for agent in agents if agent.capabilities and spec.kind in agent.capabilities]
    lacking = [agent.pk for agent in agents if agent.capabilities and spec.kind not in agent.capabilities]
    if lacking:
        if spec.mode == JobMode.EACH:
            message = (
                f"{len(lacking)} of the {len(ids)} matching agents do not offer the kind '{spec.kind}' "
                f"(it is not among their capabilities): their tasks will fail: {_named(lacking)}."
            )
            breaks = True
        else:
            message = (
                f"{len(lacking)} of the {len(ids)} matching agents do not offer the kind '{spec.kind}': "
                f"{_named(lacking)}."
            )
            breaks = not offering and not unknown
            if breaks:
                message += " No matching agent offers it: every task will fail."
        warnings.append(Warning(KIND_NOT_OFFERED, message, lacking))
        if breaks and not spec.allow_unsupported_kind:
            refusal = SpecRefused(
                KIND_NOT_OFFERED,
                "allow_unsupported_kind",
                message,
                lacking,
                answer='Send "allow_unsupported_kind": true to launch it anyway.',
            )
    if unknown:
        warnings.append(
            Warning(
                KIND_UNKNOWN,
                f"{len(unknown)} of the matching agents declare no capabilities, so whether they run "
                f"'{spec.kind}' is unknown (not counted as failures): {_named(unknown)}.",
                unknown,
            )
        )
    return Assessment(warnings, refusal)


def enforce(spec: JobSpec, agents: Sequence[Agent]) -> list[Warning]:
    """Raise ``SpecRefused`` when the submission breaks a rule; else the warnings."""
    assessment = assess(spec, agents)
    if assessment.refusal is not None:
        raise assessment.refusal
    return assessment.warnings


def fingerprint(spec: JobSpec) -> str:
    """sha256 of the canonical JSON of the job's specification, for idempotency keys.

    The validated spec is hashed, so a field left out and the same field sent with the
    server's default are the same request, and so are targets that list the same agent
    ids, capabilities or label choices in another order. The answers to the checks
    (``allow_no_agents``, ``allow_unsupported_kind``) and the key itself are left out:
    they are not part of the job. Times are hashed in UTC.
    """
    values = {name: value for name, value in asdict(spec).items() if name not in _NOT_THE_JOB}
    # A target is a set: the order of ids, capabilities and a label's choices does not change the job.
    values["target_agent_ids"] = sorted(values["target_agent_ids"])
    values["target_capabilities"] = sorted(values["target_capabilities"])
    values["target_labels"] = {
        key: sorted(wanted, key=lambda choice: (isinstance(choice, str), choice))
        if isinstance(wanted, list)
        else wanted
        for key, wanted in values["target_labels"].items()
    }
    for name in ("backoff_base_s", "backoff_cap_s", "abort_failure_ratio"):
        if values[name] is not None:
            values[name] = float(values[name])  # 5 from settings and 5.0 from JSON are one value
    if spec.mode == JobMode.EACH:
        values["task_count"] = 1  # not used by mode each (the serializer refuses another value)
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


class IdempotencyConflict(InvalidTransition):
    """The idempotency key was used by a job with another specification (HTTP 409)."""

    code = "idempotency_conflict"

    def __init__(self, key: str, existing_job: int) -> None:
        super().__init__(
            f"The idempotency key '{key}' was used by job {existing_job} with a different specification; "
            "nothing was launched. Send the same body to get that job, or use a new key."
        )
        self.details = {"existing_job": existing_job, "idempotency_key": key}
