"""Each registry signal has exactly the receivers its docstring names, so no receiver is hidden.

The registry tells ``tasks``, ``broker`` and ``notify`` of its changes through ``registry.signals``
(it may not import them); a receiver connected somewhere without a word in the
signal's docstring would be business flow nobody reading the registry can see.
"""

from __future__ import annotations

import re

import pytest
from django.dispatch import Signal

from registry import signals
from registry.models import Agent

SIGNALS = {name: value for name, value in vars(signals).items() if isinstance(value, Signal)}


def named_receivers(signal: Signal) -> set[str]:
    (line,) = [line for line in (signal.__doc__ or "").splitlines() if line.strip().startswith("Receivers:")]
    return set(re.findall(r"``([\w.]+)``", line))


def connected_receivers(signal: Signal) -> set[str]:
    sync, asynchronous = signal._live_receivers(Agent)  # Django resolves its weak references here
    return {f"{receiver.__module__}.{receiver.__qualname__}" for receiver in [*sync, *asynchronous]}


def test_the_registry_declares_the_signals_the_other_apps_listen_to():
    assert set(SIGNALS) == {
        "agent_registered",
        "agent_removing",
        "admin_state_changed",
        "agent_pinged",
        "agent_connectivity_changed",
    }


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_each_signal_has_exactly_the_receivers_its_docstring_names(name):
    signal = SIGNALS[name]

    named = named_receivers(signal)

    assert named, f"{name}: its docstring names no receiver"
    assert connected_receivers(signal) == named
    # Connected once, under their own dotted names: a second ready() cannot add them twice.
    assert {lookup_key[0] for lookup_key, *_rest in signal.receivers} == named
