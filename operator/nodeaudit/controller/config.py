"""The operator's settings (``NODEAUDIT_*``), read once at start.

Why one object: every part of the controller (the loop, the writer, the agent check) and
``nodeaudit run`` need the same values; a typo in a variable must stop the operator with one line
naming it, never become a default nobody asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nodeaudit import DEFAULT_IMAGE
from nodeaudit.core import rollout

DEFAULT_NAMESPACE = "nodeaudit-system"


class SettingError(ValueError):
    """An operator setting (environment variable) that cannot be used; names the variable."""


def env_number(name: str, default: float, *, integer: bool = False, minimum: float = 0.0) -> float:
    """``$name`` as a number (seconds unless said otherwise), ``default`` when unset or empty.
    Anything else than a plain number ≥ ``minimum`` (``1m``, ``three``, ``-1``) is a SettingError
    naming the variable and the value: a typo must not become a default nobody asked for."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number of seconds (no unit)"
        raise SettingError(f"{name}={raw!r}: expected {kind}") from None
    if not value >= minimum or value != value or value in (float("inf"), float("-inf")):
        raise SettingError(f"{name}={raw!r}: expected a finite number >= {minimum:g}")
    return value


@dataclass
class Config:
    namespace: str = DEFAULT_NAMESPACE
    image: str = DEFAULT_IMAGE
    debounce: float = 0.3
    retry_limit: int = rollout.DEFAULT_RETRY_LIMIT
    retry_backoff: float = rollout.DEFAULT_RETRY_BACKOFF
    removal_timeout: float = 600.0
    result_grace: float = 3.0
    concurrency: int = 48
    resync: float = 60.0  # the kopf timer's interval (handlers.register_timers)
    removal_poll: float = 3.0  # how often a deletion looks at its removal Jobs

    @classmethod
    def from_env(cls) -> Config:
        """The settings from ``NODEAUDIT_*``; SettingError for a value that is not usable."""
        return cls(
            namespace=os.environ.get("NODEAUDIT_NAMESPACE") or DEFAULT_NAMESPACE,
            image=os.environ.get("NODEAUDIT_IMAGE") or DEFAULT_IMAGE,
            debounce=env_number("NODEAUDIT_DEBOUNCE_SECONDS", 0.3),
            retry_limit=int(env_number("NODEAUDIT_RETRY_LIMIT", rollout.DEFAULT_RETRY_LIMIT, integer=True)),
            retry_backoff=env_number("NODEAUDIT_RETRY_BACKOFF_SECONDS", rollout.DEFAULT_RETRY_BACKOFF),
            removal_timeout=env_number("NODEAUDIT_REMOVAL_TIMEOUT_SECONDS", 600.0),
            result_grace=env_number("NODEAUDIT_RESULT_GRACE_SECONDS", 3.0),
            resync=env_number("NODEAUDIT_RESYNC_SECONDS", 60.0, minimum=0.1),
            removal_poll=env_number("NODEAUDIT_REMOVAL_POLL_SECONDS", 3.0, minimum=0.05),
        )
