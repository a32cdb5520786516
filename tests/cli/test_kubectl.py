"""The real kubectl against the demo's API server: what a user types while `nodeaudit demo` runs.

Every kubectl found is tried: the one on PATH (Debian's `kubernetes-client` 1.20 on a fresh machine,
which reads OpenAPI v2 in protobuf; newer ones read OpenAPI v3 and need Table responses for every
column) and any listed in NODEAUDIT_KUBECTL (paths separated by ':'), so both OpenAPI versions stay
tested. Each call gets a fresh discovery cache, and its stderr must be empty: no warnings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeaudit.testing import apidocs
from nodeaudit.testing import simulator as sim_mod
from nodeaudit.testing.demo import _crd
from nodeaudit.testing.runtime import ServerThread
from tests.policies import EXAMPLES

NAP = ("nodeaudit.io", "v1alpha1", "nodeauditpolicies")


def _kubectls() -> list[str]:
    found = [p for p in os.environ.get("NODEAUDIT_KUBECTL", "").split(":") if p]
    on_path = shutil.which("kubectl")
    if on_path and os.path.realpath(on_path) not in {os.path.realpath(p) for p in found}:
        found.insert(0, on_path)
    return found


KUBECTLS = _kubectls()
pytestmark = pytest.mark.skipif(not KUBECTLS, reason="no kubectl (make apt-deps installs kubernetes-client)")


def _version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "version", "--client", "-o", "json"], capture_output=True, text=True,
                         timeout=30).stdout
    m = re.search(r'"minor":\s*"(\d+)', out)
    return (1, int(m.group(1)) if m else 0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The demo's API server with the CRD, two simulated nodes, a ConfigMap and a policy with status."""
    with ServerThread([_crd()]) as server:
        store = server.server
        assert store is not None
        nodes = [sim_mod.aks_node("user1", i, mode="user") for i in range(2)]

        def seed() -> None:
            store.put_object(("", "v1", "namespaces"), None, {"metadata": {"name": "nodeaudit-system"}})
            for node in nodes:
                store.put_object(("", "v1", "nodes"), None, node)
            store.put_object(("", "v1", "configmaps"), "nodeaudit-system",
                             {"metadata": {"name": "bundle-abc"}, "data": {"apply.sh": "x", "bundle.json": "{}"}})
            policy = yaml.safe_load((EXAMPLES / "procmon.yaml").read_text())
            policy["metadata"]["name"] = "seeded"
            store.put_object(NAP, None, policy)
            store.patch_object(NAP, None, "seeded", {"status": {
                "observedGeneration": 1, "nodes": {"matched": 2, "configured": 1, "applying": 1, "failed": 0},
                "conditions": [{"type": "Ready", "status": "False", "reason": "Progressing", "message": "1 of 2"}],
                "bundle": "sha256:abc"}}, subresource="status")

        server.call(seed)
        yield {"server": server, "kubeconfig": server.kubeconfig_path, "nodes": [n["metadata"]["name"] for n in nodes],
               "home": tmp_path_factory.mktemp("kubectl-home")}


def kubectl(binary: str, cluster: dict[str, Any], *args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cluster["home"]), "KUBECONFIG": cluster["kubeconfig"]}
    return subprocess.run([binary, "--cache-dir", str(tmp / "cache"), *args], capture_output=True, text=True,
                          env=env, timeout=60)


def _rows(stdout: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.strip().splitlines()]


@pytest.fixture(params=KUBECTLS or ["kubectl"], ids=[f"kubectl-1.{_version(b)[1]}" for b in KUBECTLS] or None)
def binary(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_get_nodes_lists_the_core_nodes(binary: str, cluster: dict[str, Any], tmp_path: Path) -> None:
    result = kubectl(binary, cluster, "get", "nodes", tmp=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    rows = _rows(result.stdout)
    assert rows[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert [r[0] for r in rows[1:]] == cluster["nodes"]
    assert all(r[1] == "Ready" and r[2] == "<none>" and r[4].startswith("v1.") for r in rows[1:])


def test_get_one_node_and_configmaps(binary: str, cluster: dict[str, Any], tmp_path: Path) -> None:
    node = cluster["nodes"][1]
    result = kubectl(binary, cluster, "get", "node", node, tmp=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert [r[0] for r in _rows(result.stdout)] == ["NAME", node]
    result = kubectl(binary, cluster, "get", "cm", "-A", tmp=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    rows = _rows(result.stdout)
    assert rows[0] == ["NAMESPACE", "NAME", "DATA", "AGE"]
    assert rows[1][:3] == ["nodeaudit-system", "bundle-abc", "2"]


def test_get_nap_shows_the_printer_columns(binary: str, cluster: dict[str, Any], tmp_path: Path) -> None:
    result = kubectl(binary, cluster, "get", "nap", "seeded", tmp=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")  # no 'short name "nap" could also match' warning
    rows = _rows(result.stdout)
    assert rows[0] == ["NAME", "READY", "CONFIGURED", "MATCHED", "FAILED", "AGE"]
    assert rows[1][:5] == ["seeded", "False", "1", "2", "0"]
    assert re.fullmatch(r"\d+[smhd]", rows[1][5])
    wide = kubectl(binary, cluster, "get", "nap", "seeded", "-o", "wide", tmp=tmp_path)
    assert _rows(wide.stdout)[0][-1] == "BUNDLE" and _rows(wide.stdout)[1][-1] == "sha256:abc"


def test_get_watch_prints_rows_with_the_printer_columns(binary: str, cluster: dict[str, Any], tmp_path: Path) -> None:
    """`kubectl get nap -w`: each change is one more row under the same columns, not NAME AGE."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cluster["home"]), "KUBECONFIG": cluster["kubeconfig"]}
    server = cluster["server"]
    policy = yaml.safe_load((EXAMPLES / "procmon.yaml").read_text())
    policy["metadata"]["name"] = "watched"
    server.call(lambda: server.server.put_object(NAP, None, policy))
    proc = subprocess.Popen([binary, "--cache-dir", str(tmp_path / "cache"), "get", "nap", "watched", "-w",
                             "--request-timeout", "8s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        import time

        time.sleep(2)  # kubectl has listed and is watching
        server.call(lambda: server.server.patch_object(NAP, None, "watched", {"status": {
            "nodes": {"matched": 3, "configured": 3, "failed": 0},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Configured"}]}}, subresource="status"))
        time.sleep(1.5)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    rows = _rows(out)
    assert rows[0] == ["NAME", "READY", "CONFIGURED", "MATCHED", "FAILED", "AGE"], out
    assert rows[-1][:5] == ["watched", "True", "3", "3", "0"], out
    server.call(lambda: server.server.delete_object(NAP, None, "watched"))


def test_get_several_kinds_across_namespaces(binary: str, cluster: dict[str, Any], tmp_path: Path) -> None:
    """The README's line: `kubectl get nap,nodes,jobs -A` while the demo runs."""
    result = kubectl(binary, cluster, "get", "nap,nodes,cm", "-A", tmp=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert "nodeauditpolicy.nodeaudit.io/seeded" in result.stdout
    assert f"node/{cluster['nodes'][0]}" in result.stdout
    assert re.search(r"nodeaudit-system\s+configmap/bundle-abc\s+2", result.stdout)


def test_explain_spec_describes_the_fields(binary: str, cluster: dict[str, Any], tmp_path: Path) -> None:
    result = kubectl(binary, cluster, "explain", "nodeauditpolicy.spec", tmp=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert "KIND:" in result.stdout and "NodeAuditPolicy" in result.stdout
    fields = re.findall(r"^\s+(\w+)\s+<", result.stdout, re.M)
    assert {"nodeSelector", "rules", "presets", "volume", "rollout"} <= set(fields)
    assert "What a NodeAuditPolicy asks of the matching nodes." in result.stdout
    deeper = kubectl(binary, cluster, "explain", "nap.spec.rollout.maxFailures", tmp=tmp_path)
    assert deeper.returncode == 0 and "maxFailures" in deeper.stdout


def test_apply_validates_without_flags(binary: str, cluster: dict[str, Any], tmp_path: Path) -> None:
    policy = yaml.safe_load((EXAMPLES / "procmon.yaml").read_text())
    policy["metadata"]["name"] = "applied-" + str(_version(binary)[1])
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    result = kubectl(binary, cluster, "apply", "-f", str(path), tmp=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == f"nodeauditpolicy.nodeaudit.io/{policy['metadata']['name']} created"
    policy["spec"]["volume"] = "lean"
    path.write_text(yaml.safe_dump(policy))
    result = kubectl(binary, cluster, "apply", "-f", str(path), tmp=tmp_path)
    assert result.stdout.strip() == f"nodeauditpolicy.nodeaudit.io/{policy['metadata']['name']} configured"
    stored = cluster["server"].call(lambda: cluster["server"].server.get(NAP, None, policy["metadata"]["name"]))
    assert stored["spec"]["volume"] == "lean"
    # Client-side validation against the served schema: an unknown field is refused, nothing is written.
    policy["spec"]["volumee"] = policy["spec"].pop("volume")
    policy["metadata"]["name"] = "never-created"
    path.write_text(yaml.safe_dump(policy))
    result = kubectl(binary, cluster, "apply", "-f", str(path), tmp=tmp_path)
    assert result.returncode == 1
    assert 'unknown field "volumee"' in result.stderr
    assert cluster["server"].call(lambda: cluster["server"].server.get(NAP, None, "never-created")) is None


def test_discovery_documents() -> None:
    """What kubectl relies on in discovery, checked on the documents themselves."""
    served = [apidocs.Served("", "v1", "nodes", "Node", "node", False, frozenset({"get", "list"}), ("no",),
                             subresources=("status",)),
              apidocs.Served("metrics.k8s.io", "v1beta1", "nodes", "NodeMetrics", "", False, frozenset({"get"})),
              apidocs.Served("nodeaudit.io", "v1alpha1", "nodeauditpolicies", "NodeAuditPolicy", "nodeauditpolicy",
                             False, frozenset({"get"}), ("nap",), subresources=("status",))]
    core = apidocs.api_resource_list(served, "", "v1")
    assert core["groupVersion"] == "v1"
    status = next(r for r in core["resources"] if r["name"] == "nodes/status")
    assert "shortNames" not in status and status["verbs"] == ["get", "patch", "update"]
    groups = apidocs.api_group_list(served, {"nodeaudit.io"})
    assert [g["name"] for g in groups["groups"]] == ["nodeaudit.io"]  # metrics.k8s.io is not served


def test_human_duration_matches_kubernetes() -> None:
    cases = {0: "0s", 119: "119s", 120: "2m", 150: "2m30s", 600: "10m", 3 * 3600: "3h", 3 * 3600 + 60: "3h1m",
             10 * 3600: "10h", 50 * 3600: "2d2h", 9 * 86400: "9d", 800 * 86400: "2y70d", 9 * 365 * 86400: "9y"}
    assert {k: apidocs.human_duration(k) for k in cases} == cases


def _lines_until(proc: subprocess.Popen[str], want: re.Pattern[str], seen: list[str], timeout: float) -> re.Match[str]:
    """Read the process's stdout (a reader thread fills ``seen``) until a line matches ``want``."""
    import time

    deadline = time.monotonic() + timeout
    start = 0
    while time.monotonic() < deadline:
        for line in seen[start:]:
            m = want.search(line)
            if m:
                del seen[:seen.index(line) + 1]
                return m
        start = len(seen)
        if proc.poll() is not None and start == len(seen):
            break
        time.sleep(0.1)
    raise AssertionError(f"no line matching {want.pattern!r} within {timeout} s; output:\n" + "\n".join(seen))


@pytest.mark.operator
@pytest.mark.slow
def test_demo_keep_running_refreshes_its_table(tmp_path: Path) -> None:
    """A node added with kubectl while `demo --keep-running` serves shows up in its table, configured,
    with the Job counter moved on (it used to keep saying "Jobs run: 12")."""
    import signal
    import sys
    import threading

    nodeaudit = str(Path(sys.executable).parent / "nodeaudit")
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([nodeaudit, "demo", "--keep-running", "--refresh", "0.5", "--nodes-per-pool", "1",
                             "--metrics-port", "-1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=EXAMPLES.parent)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        before = int(_lines_until(proc, re.compile(r"Jobs run: (\d+)"), seen, 90).group(1))
        kubeconfig = _lines_until(proc, re.compile(r"KUBECONFIG=(\S+) kubectl"), seen, 10).group(1)
        node = sim_mod.aks_node("user1", 7, mode="user", vmss_suffix="20000002")
        path = tmp_path / "node.yaml"
        path.write_text(yaml.safe_dump(node))
        result = subprocess.run([KUBECTLS[0], "--cache-dir", str(tmp_path / "cache"), "apply", "-f", str(path)],
                                capture_output=True, text=True, env={**env, "KUBECONFIG": kubeconfig}, timeout=60)
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        assert result.stdout.strip() == f"node/{node['metadata']['name']} created"
        _lines_until(proc, re.compile(r"\(changed\)"), seen, 60)
        row = _lines_until(proc, re.compile(rf"^{node['metadata']['name']}\s+user1\s+linux\s+(\S+)"), seen, 60)
        while row.group(1) != "ok":  # pending first, then ok once its Job ran
            row = _lines_until(proc, re.compile(rf"^{node['metadata']['name']}\s+user1\s+linux\s+(\S+)"), seen, 60)
        after = int(_lines_until(proc, re.compile(r"Jobs run: (\d+)"), seen, 10).group(1))
        assert after == before + 1
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 130
