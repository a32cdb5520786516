"""Helpers for the operator suite: the cluster the ``cluster`` fixture hands out (local API server +
simulated nodes, tests/plugin.py), the operator suite's policy, and waiting."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import kubernetes

from nodeaudit.testing import simulator as sim_mod
from nodeaudit.testing.runtime import OperatorThread, ServerThread
from tests import REPO
from tests.policies import policy_doc

NAMESPACE = "nodeaudit-system"
GROUP, VERSION, PLURAL = "nodeaudit.io", "v1alpha1", "nodeauditpolicies"
T = TypeVar("T")


def policy(name: str = "procmon", **spec: Any) -> dict[str, Any]:
    """The seed policy as the operator tests start from it: every node, the whole cluster at once
    (maxUnavailable 100%), no agent check; spec fields given replace these."""
    defaults: dict[str, Any] = {
        "nodeSelector": {},
        "syslog": {"enabled": True, "facility": "LOG_AUTHPRIV", "priority": "LOG_INFO"},
        "monitoringAgent": {"check": "None"},
        "rollout": {"maxUnavailable": "100%", "maxFailures": 3},
    }
    return policy_doc(name, **{**defaults, **spec})


def wait_for(predicate: Callable[..., T | Literal[False] | None], timeout: float = 20, interval: float = 0.1,
             what: str = "") -> T:
    """The predicate's first truthy value (``x or False`` reads as "x once it is there"). It is
    called without arguments; ``...``: a lambda may bind a loop variable as a default."""
    deadline = time.monotonic() + timeout
    last: T | Literal[False] | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last value: {last!r}")


class Cluster:
    """The local API server, the node simulator and typed clients for one test."""

    def __init__(self, st: ServerThread) -> None:
        self.st = st
        assert st.server is not None
        self.server = st.server
        self.sim: sim_mod.NodeSimulator = st.call(lambda: sim_mod.NodeSimulator(st.server).attach())
        cfg = kubernetes.client.Configuration(host=st.url)
        self.api = kubernetes.client.ApiClient(cfg)
        # Any: the tests pass plain dicts as bodies (the client sends them as they are), where its
        # annotations name the model classes.
        self.core: Any = cast(Any, kubernetes.client.CoreV1Api(self.api))
        self.batch: Any = cast(Any, kubernetes.client.BatchV1Api(self.api))
        self.custom: Any = cast(Any, kubernetes.client.CustomObjectsApi(self.api))
        self.core.create_namespace({"metadata": {"name": NAMESPACE}})

    # -- nodes ----------------------------------------------------------------------------
    def add_nodes(self, pool: str, count: int, start: int = 0, **kw: Any) -> list[str]:
        names = []
        for i in range(start, start + count):
            node = sim_mod.aks_node(pool, i, **kw)
            self.core.create_node(node)
            names.append(node["metadata"]["name"])
        return names

    def node(self, name: str) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(self.core.read_node(name))

    def record(self, node: str, policy_name: str = "procmon") -> dict[str, Any] | None:
        ann = (self.node(node)["metadata"].get("annotations") or {}).get(f"nodeaudit.io/{policy_name}")
        return json.loads(ann) if ann else None

    # -- policies -------------------------------------------------------------------------
    def apply_policy(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, copy.deepcopy(body))

    def get_policy(self, name: str = "procmon") -> dict[str, Any] | None:
        try:
            return self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def condition(self, type_: str, name: str = "procmon") -> dict[str, Any] | None:
        obj = self.get_policy(name) or {}
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c["type"] == type_:
                return c
        return None

    def counts(self, name: str = "procmon") -> dict[str, int]:
        return dict(((self.get_policy(name) or {}).get("status") or {}).get("nodes") or {})

    # -- jobs -----------------------------------------------------------------------------
    def jobs(self, selector: str = "nodeaudit.io/policy") -> list[dict[str, Any]]:
        items = self.batch.list_namespaced_job(NAMESPACE, label_selector=selector).items
        return [self.api.sanitize_for_serialization(j) for j in items]

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        items = [self.api.sanitize_for_serialization(e) for e in self.core.list_namespaced_event(NAMESPACE).items]
        return [e for e in items if reason is None or e.get("reason") == reason]

    def operator_log(self) -> list[Any]:
        return [e for e in self.server.log if e.agent in ("kopf", "nodeaudit")]

    @contextlib.contextmanager
    def operator(self) -> Iterator[OperatorThread]:
        op = OperatorThread(NAMESPACE).start()
        try:
            yield op
        finally:
            op.stop()
        assert op.error is None, op.error


@contextlib.contextmanager
def operator_process(cluster: Cluster, kubeconfig: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`nodeaudit run` as a real process (what the Deployment runs); killed on exit if still alive.
    ``kubeconfig``: another way to the API server (the fault proxy's) than the cluster's own."""
    env = dict(os.environ, KUBECONFIG=kubeconfig or cluster.st.kubeconfig_path, NODEAUDIT_NAMESPACE=NAMESPACE,
               PYTHONPATH=str(REPO / "operator"), NODEAUDIT_METRICS_PORT=str(free_port()))
    proc = subprocess.Popen([sys.executable, "-m", "nodeaudit.cli.run", "--liveness", "",
                             "--metrics-address", "127.0.0.1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.metrics_url = f"http://127.0.0.1:{env['NODEAUDIT_METRICS_PORT']}/metrics"  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def record_requests(cluster: Cluster) -> None:
    """Append the operator's distinct API requests for the RBAC check (issue 6)."""
    path = Path(os.environ.get("NODEAUDIT_REQUEST_LOG", REPO / ".cache" / "operator-api-requests.jsonl"))
    path.parent.mkdir(parents=True, exist_ok=True)
    seen = set()
    for e in cluster.operator_log():
        # The object name matters for RBAC resourceNames; keep it for named reads only (a patch of
        # every node by name would make this log as long as the cluster).
        name = e.name or "" if e.verb == "get" else ""
        seen.add((e.verb, e.group, e.resource, e.namespace or "", e.subresource or "", name, e.agent))
    with path.open("a") as f:
        for verb, group, resource, ns, sub, name, agent in sorted(seen):
            f.write(json.dumps({"verb": verb, "apiGroup": group, "resource": resource, "namespace": ns,
                                "subresource": sub, "name": name, "agent": agent}) + "\n")
