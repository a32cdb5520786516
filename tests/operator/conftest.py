"""Fixtures for the operator suite: a fresh local API server per test, kubeconfig in $KUBECONFIG.

The operator itself is started inside each test body (``with cluster.operator():``) because
stopping kopf in a fixture teardown costs seconds per test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeaudit.testing.armserver import ArmServer, running_arm_server
from nodeaudit.testing.runtime import ServerThread
from tests.operator.operator_harness import REPO, Cluster, load_crd, record_requests

# Read (Config.from_env) when the operator starts; the resync timer keeps the first interval.
os.environ.setdefault("NODEAUDIT_REMOVAL_POLL_SECONDS", "0.3")
os.environ.setdefault("NODEAUDIT_RESYNC_SECONDS", "5")


@pytest.fixture(scope="session")
def arm_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArmServer]:
    with running_arm_server(str(tmp_path_factory.mktemp("arm"))) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _fresh_request_log() -> None:
    """The RBAC check reads the requests of this run only."""
    path = Path(os.environ.get("NODEAUDIT_REQUEST_LOG", REPO / ".cache" / "operator-api-requests.jsonl"))
    path.unlink(missing_ok=True)


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    monkeypatch.setenv("NODEAUDIT_RETRY_BACKOFF_SECONDS", "0.2")
    monkeypatch.setenv("NODEAUDIT_DEBOUNCE_SECONDS", "0.05")
    monkeypatch.setenv("NODEAUDIT_RESULT_GRACE_SECONDS", "1")
    monkeypatch.setenv("NODEAUDIT_IMAGE", "example.azurecr.io/nodeaudit:test")
    with ServerThread([load_crd()]) as st:
        monkeypatch.setenv("KUBECONFIG", st.kubeconfig_path)
        c = Cluster(st)
        try:
            yield c
        finally:
            record_requests(c)
            st.call(c.sim.detach)


@pytest.fixture
def arm(arm_session: ArmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArmServer]:
    """The local https ARM endpoint, wired into the operator through its environment variables."""
    arm_session.reset()
    token = tmp_path / "arm-token"
    token.write_text(arm_session.token + "\n")
    monkeypatch.setenv("NODEAUDIT_ARM_ENDPOINT", arm_session.endpoint)
    monkeypatch.setenv("NODEAUDIT_ARM_TOKEN_FILE", str(token))
    monkeypatch.setenv("NODEAUDIT_ARM_CA_FILE", arm_session.ca_file)
    yield arm_session
    arm_session.reset()
