"""`nodeaudit report` against a running cluster: the real operator, the local API server and the node
simulator with the demo's pools; the live read and a saved List of the same objects agree."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nodeaudit.cli.main import main
from nodeaudit.testing import demo
from tests.operator.operator_harness import Cluster, policy, wait_for

pytestmark = pytest.mark.operator


def test_report_reads_the_cluster_and_kubectls_saved_output_alike(cluster: Cluster, tmp_path, monkeypatch) -> None:
    names = []
    for pool, mode, _taints, suffix in demo.POOLS:
        names += cluster.add_nodes(pool, 2, mode=mode, vmss_suffix=suffix)
    broken = names[3]
    cluster.sim.fail_nodes = {broken}
    cluster.apply_policy(policy("pci", rules=[], presets=["pci-dss"], rollout={"maxUnavailable": "100%", "maxFailures": 5}))
    with cluster.operator():
        wait_for(lambda: (cluster.counts("pci").get("configured") == 5
                          and (cluster.record(broken, "pci") or {}).get("result") == "failed"), timeout=30,
                 what="5 configured, 1 failed")
    monkeypatch.setenv("KUBECONFIG", cluster.st.kubeconfig_path)
    live = CliRunner().invoke(main, ["report", "--format", "json"])
    assert live.exit_code == 0, live.output
    report = json.loads(live.stdout)
    rows = {r["node"]: r for r in report["rows"]}
    assert sorted(rows) == sorted(names)
    assert rows[broken]["status"] == "failed" and rows[broken]["packs"][0]["in_force"] == []
    for name in set(names) - {broken}:
        assert rows[name]["status"] == "verified", rows[name]
        assert len(rows[name]["packs"][0]["in_force"]) == 6
    # The saved-file path (`kubectl get nap,nodes -o json`) is tested in tests/cli/test_report.py: the
    # local API server answers kubectl's node list empty (its Table/list support is the cli helper's).
    saved = tmp_path / "cluster.json"
    items = [{**p, "kind": "NodeAuditPolicy"} for p in [cluster.get_policy("pci")]]
    items += [{**cluster.node(n), "kind": "Node"} for n in names]
    saved.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    offline = CliRunner().invoke(main, ["report", "--from", str(saved), "--format", "json"])
    assert offline.exit_code == 0, offline.output
    again = json.loads(offline.stdout)
    assert [(r["node"], r["status"], r["packs"]) for r in again["rows"]] == [
        (r["node"], r["status"], r["packs"]) for r in report["rows"]]
