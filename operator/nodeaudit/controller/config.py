"""The operator's settings (``NODEAUDIT_*``): read once, at start, into one frozen Config.

Why one object: the loop, the writer, the agent check and ``nodeaudit run`` need the same values.
Each setting is declared once below (its variable, its default, how it is read); ``from_env``
reads them all when the operator starts and the Config travels through kopf's memo, never
through ``os.environ``. A typo in a variable stops the operator with one line naming it: it must
not become a default nobody asked for.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nodeaudit import DEFAULT_IMAGE
from nodeaudit.core import rollout

DEFAULT_NAMESPACE = "nodeaudit-system"

T = TypeVar("T")
Parse = Callable[[str, str], Any]  # (variable, raw value) -> value, or SettingError


class SettingError(ValueError):
    """An operator setting (environment variable) that cannot be used; names the variable."""


def text(name: str, raw: str) -> str:
    return raw


def seconds(minimum: float = 0.0) -> Parse:
    """A plain number of seconds ≥ ``minimum`` (``1m``, ``three``, ``-1`` are SettingErrors)."""
    return lambda name, raw: _number(name, raw, integer=False, minimum=minimum)


def whole(name: str, raw: str) -> int:
    return int(_number(name, raw, integer=True, minimum=0.0))


def ca_file(name: str, raw: str) -> str:
    """A PEM file of CA certificates, read once here: a missing or empty file is said at start,
    not by the first agent check."""
    try:
        with open(raw, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise SettingError(f"{name}={raw!r}: {e.strerror or e}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise SettingError(f"{name}={raw!r}: no PEM certificate in the file")
    return raw


def _number(name: str, raw: str, *, integer: bool, minimum: float) -> float:
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number of seconds (no unit)"
        raise SettingError(f"{name}={raw!r}: expected {kind}") from None
    if not value >= minimum or value != value or value in (float("inf"), float("-inf")):
        raise SettingError(f"{name}={raw!r}: expected a finite number >= {minimum:g}")
    return value


def https_url(name: str, raw: str) -> str:
    """An endpoint: https only (azure-core sends no bearer token over http), no trailing /."""
    if not raw.startswith("https://"):
        raise SettingError(f"{name}={raw!r}: expected an https:// URL")
    return raw.rstrip("/")


def cluster_id(name: str, raw: str) -> str:
    """The AKS cluster's ARM resource id."""
    import re

    if not re.fullmatch(r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ContainerService/"
                        r"managedClusters/[^/]+", raw, re.IGNORECASE):
        raise SettingError(f"{name}={raw!r}: expected /subscriptions/<sub>/resourceGroups/<rg>/providers/"
                           "Microsoft.ContainerService/managedClusters/<name>")
    return raw


def setting(variable: str, default: T, parse: Parse) -> T:
    """A Config field read from ``$variable`` (unset or empty: ``default``)."""
    return field(default=default, metadata={"variable": variable, "parse": parse})


@dataclass(frozen=True)
class Config:
    namespace: str = setting("NODEAUDIT_NAMESPACE", DEFAULT_NAMESPACE, text)
    """Where Jobs, bundle ConfigMaps and Events live."""
    image: str = setting("NODEAUDIT_IMAGE", DEFAULT_IMAGE, text)
    debounce: float = setting("NODEAUDIT_DEBOUNCE_SECONDS", 0.3, seconds())
    retry_limit: int = setting("NODEAUDIT_RETRY_LIMIT", rollout.DEFAULT_RETRY_LIMIT, whole)
    retry_backoff: float = setting("NODEAUDIT_RETRY_BACKOFF_SECONDS", rollout.DEFAULT_RETRY_BACKOFF, seconds())
    removal_timeout: float = setting("NODEAUDIT_REMOVAL_TIMEOUT_SECONDS", 600.0, seconds())
    result_grace: float = setting("NODEAUDIT_RESULT_GRACE_SECONDS", 3.0, seconds())
    resync: float = setting("NODEAUDIT_RESYNC_SECONDS", 60.0, seconds(minimum=0.1))
    """The kopf timer's interval (handlers.register_timers)."""
    removal_poll: float = setting("NODEAUDIT_REMOVAL_POLL_SECONDS", 3.0, seconds(minimum=0.05))
    """How often a deletion looks at its removal Jobs."""
    arm_ca_file: str | None = setting("NODEAUDIT_ARM_CA_FILE", None, ca_file)
    """CA certificates for the ARM endpoint (None: the system's)."""
    logs_endpoint: str | None = setting("NODEAUDIT_LOGS_ENDPOINT", None, https_url)
    """The Log Analytics query endpoint for the arrival check (None: https://api.loganalytics.io)."""
    cluster_resource_id: str | None = setting("NODEAUDIT_CLUSTER_RESOURCE_ID", None, cluster_id)
    """The AKS cluster (None: the managedBy of the node resource group in the providerIDs)."""
    instance: str = setting("HOSTNAME", "nodeaudit", text)
    """This replica (its pod name): the reportingInstance of its Events."""
    concurrency: int = 48
    """Job creates in flight at once."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **given: Any) -> Config:
        """The settings from ``env`` (default ``os.environ``); ``given`` values (command-line
        flags) win. SettingError for a value that is not usable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in given or "variable" not in f.metadata:
                continue
            raw = env.get(f.metadata["variable"], "").strip()
            if raw:
                values[f.name] = f.metadata["parse"](f.metadata["variable"], raw)
        return cls(**values, **given)
