"""The controller's decisions with a fake API client: no server, no kopf (fast, exact)."""

from __future__ import annotations

import asyncio
import json
import os
import types
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nodeaudit.cli import run as cli_run
from nodeaudit.controller import config as controller_config
from nodeaudit.controller import kube
from nodeaudit.controller import reconciler as controller
from nodeaudit.core import jobs, nodes
from nodeaudit.testing import demo as demo_main
from nodeaudit.testing import simulator as sim
from tests import REPO
from tests.operator.operator_harness import policy

POLICY = "procmon"
KEY = nodes.state_annotation(POLICY)


class FakeKube:
    """Records writes; ``fail_create`` makes every POST an ApiError."""

    def __init__(self, fail_create: kube.ApiError | None = None) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.fail_create = fail_create

    async def create(self, path: str, body: Any) -> tuple[bool, Any]:
        self.calls.append(("create", path, body))
        if self.fail_create is not None:
            raise self.fail_create
        return True, body

    async def merge_patch(self, path: str, body: Any) -> Any:
        self.calls.append(("merge", path, body))
        return {}

    async def json_patch(self, path: str, ops: Any) -> Any:
        self.calls.append(("json", path, ops))
        return {}

    async def get(self, path: str, params: Any = None) -> Any:
        return {"items": []}

    async def close(self) -> None:
        pass

    def node_writes(self) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[1].startswith("/api/v1/nodes/")]


def make_controller(fake: FakeKube) -> controller.Controller:
    ctl = controller.Controller(fake, controller_config.Config(result_grace=0.0))  # type: ignore[arg-type]
    body = policy(POLICY)
    body["metadata"].update(uid="puid", generation=1, creationTimestamp="2026-01-01T00:00:00Z")
    ctl.set_policy(body)
    assert ctl.view.policies[POLICY].error is None
    return ctl


def node_body(record: dict[str, Any] | None = None, taints: list[dict[str, str]] | None = None,
              annotations: bool = True) -> dict[str, Any]:
    raw = sim.aks_node("user1", 0, taints=taints)
    raw["metadata"].update(uid="nuid", resourceVersion="41")
    raw["status"]["nodeInfo"]["bootID"] = "boot1"
    raw["metadata"]["annotations"] = {KEY: json.dumps(record)} if record else {}
    if annotations and not record:
        raw["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = "0"
    return dict(raw)


def job_body(name: str, node: str, bundle: str, finished: str, ok: bool = True) -> dict[str, Any]:
    cond = {"type": "Complete" if ok else "Failed", "status": "True", "lastTransitionTime": finished}
    return {"metadata": {"name": name, "labels": {jobs.LABEL_POLICY: POLICY, jobs.LABEL_NODE: node,
                                                   jobs.LABEL_ACTION: "apply", jobs.LABEL_BUDGET: "update"},
                         "annotations": {jobs.ANNOTATION_BUNDLE: bundle}},
            "spec": {"template": {"spec": {"nodeName": node}}},
            "status": {"completionTime": finished if ok else None, "conditions": [cond]}}


def written_record(fake: FakeKube) -> dict[str, Any]:
    (_, _, body), = [c for c in fake.node_writes() if c[0] == "merge"]
    return dict(json.loads(body["metadata"]["annotations"][KEY]))


def test_restart_never_lets_an_older_job_overwrite_a_newer_record() -> None:
    """After a restart both finished Jobs (TTL 1 h) are unrecorded in memory: the node's record
    came from the newer Job B; the older Job A (another bundle) must not overwrite it."""
    fake = FakeKube()
    ctl = make_controller(fake)
    node_name = sim.aks_node("user1", 0)["metadata"]["name"]
    record = {"bundle": "sha256:new", "result": "ok", "time": "2026-01-01T10:05:00.300Z", "bootID": "boot1",
              "uid": "nuid", "job": "job-b", "failures": 0, "lastSuccess": "2026-01-01T10:05:00.300Z"}
    ctl.on_node(node_body(record))
    ctl.on_job(job_body("job-a", node_name, "sha256:old", "2026-01-01T10:00:00Z"))
    ctl.on_job(job_body("job-b", node_name, "sha256:new", "2026-01-01T10:05:00Z"))
    ctl.view.results.update({"job-a": {"ok": True}, "job-b": {"ok": True}})
    asyncio.run(ctl.record_finished(ctl.view.policies[POLICY]))
    assert fake.node_writes() == []
    assert {"job-a", "job-b"} <= ctl.view.recorded
    # B pruned by its TTL meanwhile: the record's time still says A is older.
    fake2 = FakeKube()
    ctl2 = make_controller(fake2)
    ctl2.on_node(node_body(record))
    ctl2.on_job(job_body("job-a", node_name, "sha256:old", "2026-01-01T10:00:00Z"))
    ctl2.view.results["job-a"] = {"ok": True}
    asyncio.run(ctl2.record_finished(ctl2.view.policies[POLICY]))
    assert fake2.node_writes() == []


def test_restart_records_only_the_newest_unrecorded_job() -> None:
    """The operator died before recording either Job: only the newer one is written."""
    fake = FakeKube()
    ctl = make_controller(fake)
    node_name = sim.aks_node("user1", 0)["metadata"]["name"]
    older = {"bundle": "sha256:older", "result": "ok", "time": "2026-01-01T09:00:00.000Z", "bootID": "boot1",
             "uid": "nuid", "job": "job-0", "failures": 0, "lastSuccess": "2026-01-01T09:00:00.000Z"}
    ctl.on_node(node_body(older))
    ctl.on_job(job_body("job-b", node_name, "sha256:new", "2026-01-01T10:05:00Z", ok=False))
    ctl.on_job(job_body("job-a", node_name, "sha256:old", "2026-01-01T10:00:00Z"))
    ctl.view.results.update({"job-a": {"ok": True}, "job-b": {"ok": False, "message": "auditctl: boom"}})
    asyncio.run(ctl.record_finished(ctl.view.policies[POLICY]))
    rec = written_record(fake)
    assert rec["job"] == "job-b" and rec["bundle"] == "sha256:new" and rec["result"] == "failed"
    assert rec["budget"] == "update" and rec["error"] == "auditctl: boom"


def test_gate_taint_and_record_are_one_json_patch() -> None:
    gate = {"key": nodes.STARTUP_TAINT_KEY, "value": "true", "effect": "NoSchedule"}
    for annotated in (True, False):
        fake = FakeKube()
        ctl = make_controller(fake)
        node_name = sim.aks_node("user1", 0)["metadata"]["name"]
        ctl.on_node(node_body(taints=[gate], annotations=annotated))
        ctl.on_job(job_body("job-a", node_name, ctl.view.policies[POLICY].bundle.hash, "2026-01-01T10:00:00Z"))
        ctl.view.results["job-a"] = {"ok": True, "distro": "ubuntu-22.04"}
        asyncio.run(ctl.record_finished(ctl.view.policies[POLICY]))
        (kind, _, ops), = fake.node_writes()
        assert kind == "json"
        assert ops[0] == {"op": "test", "path": "/spec/taints", "value": [gate]}
        assert ops[1] == {"op": "replace", "path": "/spec/taints", "value": []}
        add = ops[-1]
        assert add["op"] == "add" and add["path"] == "/metadata/annotations/nodeaudit.io~1procmon"
        assert json.loads(add["value"])["result"] == "ok"
        if annotated:
            assert len(ops) == 3
        else:  # no annotations map yet: created, guarded by the version seen
            assert ops[2:4] == [{"op": "test", "path": "/metadata/resourceVersion", "value": "41"},
                                {"op": "add", "path": "/metadata/annotations", "value": {}}]
        assert not ctl.view.nodes[node_name].has_startup_taint


def test_create_refused_reports_degraded_and_keeps_going() -> None:
    err = kube.ApiError(404, {"message": 'namespaces "nodeaudit-system" not found'})
    fake = FakeKube(fail_create=err)
    ctl = make_controller(fake)
    ctl.on_node(node_body())
    entry = ctl.view.policies[POLICY]
    asyncio.run(ctl.reconcile(entry))  # no exception
    (_, _, body), = [c for c in fake.calls if c[0] == "merge" and c[1].endswith("/status")]
    degraded = {c["type"]: c for c in body["status"]["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "CreateFailed"
    assert "POST /api/v1/namespaces/nodeaudit-system/configmaps" in degraded["message"]
    assert 'namespaces "nodeaudit-system" not found' in degraded["message"]
    events = [c for c in fake.calls if c[0] == "create" and c[1].endswith("/events")]
    assert [e[2]["reason"] for e in events] == ["CreateFailed"]
    assert entry.requeue_at is not None
    asyncio.run(ctl.reconcile(entry))  # the same refusal again: no second Event
    assert len([c for c in fake.calls if c[0] == "create" and c[1].endswith("/events")]) == 1


def test_conflicts_filter_the_matched_nodes() -> None:
    ctl = make_controller(FakeKube())
    later = policy("later", syslog={"enabled": True, "facility": "LOG_LOCAL6", "priority": "LOG_INFO"},
                   nodeSelector={"matchLabels": {"kubernetes.azure.com/agentpool": "user1"}})
    later["metadata"].update(uid="u2", generation=1, creationTimestamp="2026-01-02T00:00:00Z")
    ctl.set_policy(later)
    for pool in ("user1", "user2"):
        ctl.on_node(sim.aks_node(pool, 0))
    entry = ctl.view.policies["later"]
    matched = ctl.view.matched_nodes(entry)
    assert ctl.view.conflicts(entry, matched) == {POLICY: [sim.aks_node("user1", 0)["metadata"]["name"]]}
    assert ctl.view.conflicts(ctl.view.policies[POLICY], ctl.view.matched_nodes(ctl.view.policies[POLICY])) == {}


def test_deleted_node_drops_its_overlay() -> None:
    ctl = make_controller(FakeKube())
    raw = node_body()
    ctl.on_node(raw)
    ctl.view.remember(raw["metadata"]["name"], POLICY, {"result": "ok"})
    ctl.on_node(raw, deleted=True)
    assert raw["metadata"]["name"] not in ctl.view.overlay


# ---- settings and credentials ------------------------------------------------------------------

@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("NODEAUDIT_RESYNC_SECONDS", "1m", "NODEAUDIT_RESYNC_SECONDS='1m': expected a number of seconds"),
    ("NODEAUDIT_RETRY_LIMIT", "three", "NODEAUDIT_RETRY_LIMIT='three': expected a whole number"),
    ("NODEAUDIT_DEBOUNCE_SECONDS", "-1", "NODEAUDIT_DEBOUNCE_SECONDS='-1'"),
])
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                        fragment: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(controller_config.SettingError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        controller_config.Config.from_env()
    result = CliRunner().invoke(cli_run.run, [], env={"KUBECONFIG": "/nonexistent"})
    assert result.exit_code == 2 and fragment in result.output


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEAUDIT_RESYNC_SECONDS", "7.5")
    monkeypatch.setenv("NODEAUDIT_REMOVAL_POLL_SECONDS", "0.5")
    monkeypatch.setenv("NODEAUDIT_RETRY_LIMIT", "5")
    cfg = controller_config.Config.from_env()
    assert (cfg.resync, cfg.removal_poll, cfg.retry_limit) == (7.5, 0.5, 5)


def test_run_without_credentials_exits_2_with_one_line() -> None:
    result = CliRunner().invoke(cli_run.run, ["--metrics-port", "0"],
                                env={"KUBECONFIG": "/nonexistent", "KUBERNETES_SERVICE_HOST": None})
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "nodeaudit run: no usable Kubernetes credentials: kubeconfig /nonexistent: no such file; "
        "in-cluster: not in a cluster (KUBERNETES_SERVICE_HOST unset)"]


def _info(server: str, token: str = "kubeconfig-token") -> Any:
    return types.SimpleNamespace(server=server, token=token, scheme="Bearer", username=None, password=None,
                                 ca_path=None, ca_data=None, insecure=False, certificate_path=None,
                                 certificate_data=None, private_key_path=None, private_key_data=None)


def test_service_account_token_only_for_the_in_cluster_server(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    monkeypatch.setattr(kube, "SA_TOKEN_FILE", str(token))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    k = kube.Kube()
    k.configure(_info("http://127.0.0.1:8001"))  # KUBECONFIG to another server
    assert k._auth_headers()["Authorization"] == "Bearer kubeconfig-token"
    k.configure(_info("http://127.0.0.1:6443"))
    assert k._auth_headers()["Authorization"] == "Bearer sa-token"
    assert kube.is_in_cluster_server("https://127.0.0.1:6443/")
    assert not kube.is_in_cluster_server("https://localhost:6443")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert not kube.is_in_cluster_server("http://127.0.0.1:6443")


def test_credential_files_written_once() -> None:
    k = kube.Kube()
    first = k._file(b"-----BEGIN KEY-----")
    assert first is not None and k._file("-----BEGIN KEY-----") == first and os.path.exists(first)
    assert k._file(b"other") != first


# ---- the demo's pieces ----------------------------------------------------------------------------

def test_demo_status_line_and_rows() -> None:
    assert demo_main._status_line({}) == "  waiting for the operator (no status yet)"
    selector = {"matchLabels": {"kubernetes.azure.com/mode": "user"}}
    system = sim.aks_node("system", 0, mode="system")
    assert demo_main._row(system, POLICY, selector)[3] == "not selected"
    assert demo_main._row(sim.aks_node("win", 0, os_name="windows"), POLICY, selector)[3] == "-"
    user = sim.aks_node("user1", 0)
    assert demo_main._row(user, POLICY, selector)[3] == "pending"
    user["metadata"]["annotations"][f"nodeaudit.io/{POLICY}"] = json.dumps(
        {"result": "failed", "bundle": "sha256:abc", "error": "auditctl failed: " + "x" * 200})
    row = demo_main._row(user, POLICY, selector)
    assert row[3] == "failed" and row[-1].startswith("auditctl failed: ") and len(row[-1]) <= 60


@pytest.mark.parametrize(("text", "expected"), [
    ("apiVersion: nodeaudit.io/v1alpha1\nkind: NodeAuditPolicy\nspec: {}\n", "metadata"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_demo_rejects_a_bad_policy_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                        expected: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        demo_main._policy(str(path))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("nodeaudit demo: ") and expected in err and "Traceback" not in err


def test_demo_rejects_an_unknown_syscall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text((REPO / "examples" / "procmon.yaml").read_text().replace("execve", "execvee"))
    with pytest.raises(SystemExit):
        demo_main._policy(str(path))
    assert 'spec.rules[0]: unknown syscall "execvee" for arch b64' in capsys.readouterr().err
