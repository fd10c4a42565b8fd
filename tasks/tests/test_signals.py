"""Each task-engine signal has exactly the receivers its docstring names, so no receiver is hidden.

The engine tells ``notify`` of its changes through ``tasks.signals`` (it may not import it);
a receiver connected without a word in the signal's docstring would be flow nobody reading
the engine can see.
"""

from __future__ import annotations

import re

import pytest
from django.dispatch import Signal

from tasks import signals
from tasks.models import Job, Task
from tasks.retention import PruneCounts

SIGNALS = {name: value for name, value in vars(signals).items() if isinstance(value, Signal)}
SENDERS = {"task_failed": Task, "pruning": PruneCounts}


def named_receivers(signal: Signal) -> set[str]:
    (line,) = [line for line in (signal.__doc__ or "").splitlines() if line.strip().startswith("Receivers:")]
    return set(re.findall(r"``([\w.]+)``", line))


def test_the_engine_declares_the_signals_the_other_apps_listen_to():
    assert set(SIGNALS) == {"job_started", "job_finished", "job_paused", "job_aborted", "task_failed", "pruning"}


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_each_signal_has_exactly_the_receivers_its_docstring_names(name):
    signal = SIGNALS[name]

    named = named_receivers(signal)

    assert named, f"{name}: its docstring names no receiver"
    sync, asynchronous = signal._live_receivers(SENDERS.get(name, Job))
    assert {f"{receiver.__module__}.{receiver.__qualname__}" for receiver in [*sync, *asynchronous]} == named
    assert {lookup_key[0] for lookup_key, *_rest in signal.receivers} == named
