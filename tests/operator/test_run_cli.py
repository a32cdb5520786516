"""`nodeaudit run` as a user starts it: --kubeconfig and --context, --log-format json, the startup
line, and its usage errors (a subprocess of the installed command against the local API server)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from nodeaudit.testing import apiserver
from nodeaudit.testing import simulator as sim_mod
from nodeaudit.testing.demo import _crd
from nodeaudit.testing.runtime import ServerThread
from tests.cli.usage import NODEAUDIT, assert_one_line_error, nodeaudit
from tests.policies import policy_doc

NAP = ("nodeaudit.io", "v1alpha1", "nodeauditpolicies")


def _kubeconfig(tmp_path: Path, url: str) -> Path:
    """The local server as context "local"; the current context points at a port where nothing listens,
    so only --context local can work."""
    config = apiserver.kubeconfig(url)
    config["clusters"].append({"name": "dead", "cluster": {"server": "http://127.0.0.1:1"}})
    config["contexts"].append({"name": "dead", "context": {"cluster": "dead", "user": "local"}})
    config["current-context"] = "dead"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_run_with_kubeconfig_context_and_json_logs(tmp_path: Path) -> None:
    with ServerThread([_crd()]) as server:
        store = server.server
        assert store is not None
        server.call(lambda: store.put_object(("", "v1", "namespaces"), None, {"metadata": {"name": "nodeaudit-system"}}))
        server.call(lambda: store.put_object(("", "v1", "nodes"), None, sim_mod.aks_node("user1", 0, mode="user")))
        policy = policy_doc(monitoringAgent={"check": "None"})
        server.call(lambda: store.put_object(NAP, None, policy))
        kubeconfig = _kubeconfig(tmp_path, server.url)
        proc = subprocess.Popen([NODEAUDIT, "run", "--kubeconfig", str(kubeconfig), "--context", "local",
                                 "--log-format", "json", "--metrics-port", "0", "--liveness", ""],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 60
            status: dict[str, object] = {}
            while time.monotonic() < deadline and not status.get("conditions"):
                obj = server.call(lambda: store.get(NAP, None, "procmon")) or {}
                status = obj.get("status") or {}
                time.sleep(0.3)
            assert status.get("conditions"), "the operator never wrote a status: it did not log in"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    starting = [e["message"] for e in lines if "starting" in e["message"]]
    assert starting == [f"nodeaudit {__import__('nodeaudit').__version__} starting: namespace nodeaudit-system, "
                        "image ghcr.io/nodeaudit/nodeaudit:" + __import__("nodeaudit").__version__ +
                        ", watching Nodes and NodeAuditPolicies cluster-wide and Jobs, Pods and ConfigMaps in "
                        "nodeaudit-system, metrics off, liveness off"]
    assert not [e for e in lines if e["level"] == "error"], [e for e in lines if e["level"] == "error"]


def test_run_usage_errors(tmp_path: Path) -> None:
    kubeconfig = _kubeconfig(tmp_path, "http://127.0.0.1:1")
    assert_one_line_error(nodeaudit("run", "--kubeconfig", str(kubeconfig), "--context", "nope"), 2,
                          r"nodeaudit run: --context: context nope: kubeconfig .*kubeconfig: .*nope")
    assert_one_line_error(nodeaudit("run", "--namespace", "Bad_NS"), 2,
                          r'Invalid value for --namespace: "Bad_NS" is not a valid namespace name')
    assert_one_line_error(nodeaudit("run", "--kubeconfig", str(tmp_path / "none")), 2,
                          r"nodeaudit run: no usable Kubernetes credentials: kubeconfig .*none: no such file")
    assert_one_line_error(nodeaudit("run", "--log-format", "xml"), 2, r"Invalid value for '--log-format'")
    assert_one_line_error(nodeaudit("render", "x.yaml", "-o", str(tmp_path / "o"), "--namespace", "-x"), 2,
                          r"Invalid value for --namespace")
