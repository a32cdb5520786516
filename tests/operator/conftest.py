"""The operator suite's settings: the shared ``cluster`` and ``arm`` fixtures (tests/plugin.py),
with the ARM endpoint wired into the operator through its environment variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodeaudit.testing.armserver import ArmServer
from tests import REPO

# Read (Config.from_env) when the operator starts; the resync timer keeps the first interval.
os.environ.setdefault("NODEAUDIT_REMOVAL_POLL_SECONDS", "0.3")
os.environ.setdefault("NODEAUDIT_RESYNC_SECONDS", "5")


@pytest.fixture(scope="session", autouse=True)
def _fresh_request_log() -> None:
    """The RBAC check reads the requests of this run only."""
    path = Path(os.environ.get("NODEAUDIT_REQUEST_LOG", REPO / ".cache" / "operator-api-requests.jsonl"))
    path.unlink(missing_ok=True)


@pytest.fixture
def arm(arm: ArmServer, token_file: Path, monkeypatch: pytest.MonkeyPatch) -> ArmServer:
    """The local https ARM endpoint (reset around the test), wired into the operator."""
    monkeypatch.setenv("NODEAUDIT_ARM_ENDPOINT", arm.endpoint)
    monkeypatch.setenv("NODEAUDIT_ARM_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("NODEAUDIT_ARM_CA_FILE", arm.ca_file)
    monkeypatch.setenv("NODEAUDIT_LOGS_ENDPOINT", arm.endpoint)  # Log Analytics: the same server
    return arm
