"""The fixtures every suite shares, in one pytest plugin (registered once, in tests/conftest.py).

- ``repo``: the checkout the tests run in (``tests.REPO`` where a module-level path is needed);
- ``arm_session`` / ``arm`` / ``token_file`` (its bearer token): the local https ARM endpoint (127.0.0.1, trustme
  CA; ``nodeaudit.testing.armserver``), one per session, reset around every test that uses it;
- ``cluster``: a fresh local API server (kmock subclass) with the node simulator, its kubeconfig
  in ``$KUBECONFIG``, serving the committed CRD.

The policy builder is a plain function, ``tests.policies.policy_doc``, because tests also call it
at import time (parametrize lists). Heavy imports (kmock, kopf) happen inside the fixtures, so a
suite that does not use them (the Azure suite under azure-mgmt-compute 37) never imports them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests import REPO

if TYPE_CHECKING:
    from nodeaudit.testing.armserver import ArmServer
    from tests.operator.operator_harness import Cluster

SUITES = ("host", "operator", "azure")
TESTS = REPO / "tests"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test under tests/host/ is marked ``host``, under tests/operator/ ``operator``, under
    tests/azure/ ``azure``. tryfirst: the marks must be on the items before ``-m`` deselects."""
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if folder in SUITES:
            item.add_marker(folder)


@pytest.fixture
def repo() -> Path:
    return REPO


# ---- the local https ARM endpoint ---------------------------------------------------------------

@pytest.fixture(scope="session")
def arm_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArmServer]:
    from nodeaudit.testing.armserver import running_arm_server

    with running_arm_server(str(tmp_path_factory.mktemp("arm"))) as server:
        yield server


@pytest.fixture
def arm(arm_session: ArmServer) -> Iterator[ArmServer]:
    arm_session.reset()
    yield arm_session
    arm_session.reset()


@pytest.fixture
def token_file(tmp_path: Path, arm: ArmServer) -> Path:
    """A token file (NODEAUDIT_ARM_TOKEN_FILE) holding the endpoint's bearer token."""
    path = tmp_path / "arm-token"
    path.write_text(arm.token + "\n")
    return path


# ---- the local API server -----------------------------------------------------------------------

def load_crd() -> dict[str, Any]:
    """The committed CRD (what a user applies; tests/core/test_crd.py keeps it equal to the model),
    or the model's own before ``make crds`` has written it."""
    path = REPO / "crds" / "nodeauditpolicy.yaml"
    if path.exists() and path.stat().st_size:
        return dict(yaml.safe_load(path.read_text()))
    from nodeaudit.core.crd import crd

    return crd()


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A fresh API server and node simulator per test. The operator itself is started inside the
    test body (``with cluster.operator():``): stopping kopf in a fixture teardown costs seconds."""
    from nodeaudit.testing.runtime import ServerThread
    from tests.operator.operator_harness import Cluster, record_requests

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
