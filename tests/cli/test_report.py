"""`nodeaudit report` on a simulated cluster: the demo's nodes (three VMSS pools and a Windows node),
a policy with the pci-dss pack, records as the operator writes them from apply.sh's result lines,
and one node whose verification found a pack rule missing."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nodeaudit.cli.main import main
from nodeaudit.core import noderecord, packs
from nodeaudit.core.bundle import render_bundle
from nodeaudit.core.jobs import JobInfo
from nodeaudit.core.nodes import facts_from_node, state_annotation
from nodeaudit.core.policy import parse_policy
from nodeaudit.testing import demo
from nodeaudit.testing import simulator as sim

NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone.utc)
POLICY: dict[str, Any] = {"apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicy", "metadata": {"name": "pci"},
          "spec": {"presets": ["pci-dss"], "nodeSelector": {"matchLabels": {"kubernetes.azure.com/mode": "user"}},
                   "verifyInterval": "6h"}}
MISSING_REQ = "10.2.5.c"


def demo_nodes() -> list[dict]:
    nodes = [sim.aks_node(pool, i, mode=mode, taints=taints, vmss_suffix=suffix)
             for pool, mode, taints, suffix in demo.POOLS for i in range(3)]
    return [*nodes, sim.aks_node("win1", 0, os_name="windows", mode="user")]


def result_line(bundle: str, ok: bool, loaded: int, message: str, lost: int = 0, growth: int = 0) -> dict:
    """What apply.sh prints as its last line (see host/apply.sh emit)."""
    return {"ok": ok, "bundle": bundle, "policy": "pci", "action": "apply", "distro": "ubuntu-22.04",
            "auditVersion": "3.0.7", "rulesLoaded": loaded, "installed": False, "restarted": False,
            "lost": lost, "lostGrowth": growth, "enabled": 1, "backlog": 0, "message": message}


def cluster() -> tuple[dict, str, str, str]:
    """The saved `kubectl get nap,nodes -o json`, the bundle, the broken node and the missing listing."""
    policy = parse_policy(POLICY)
    bundle = render_bundle(policy)
    listings = [r.listing for r in bundle.rules if r.listing]
    missing = next(line for line in listings if f"key={MISSING_REQ}-" in line or f"-k {MISSING_REQ}-" in line)
    nodes = demo_nodes()
    user_nodes = [n for n in nodes if n["metadata"]["labels"]["kubernetes.azure.com/mode"] == "user"
                  and n["metadata"]["labels"]["kubernetes.io/os"] == "linux"]
    broken = user_nodes[1]["metadata"]["name"]
    for index, node in enumerate(user_nodes):
        facts = facts_from_node(node)
        name = node["metadata"]["name"]
        job = JobInfo(name=f"na-pci-{index}", policy="pci", node=name, action="apply", budget="new",
                      bundle=bundle.hash, outcome="succeeded", created=0.0)
        first = noderecord.build_record(job, facts, None, result_line(bundle.hash, True, len(listings), "ok"),
                                        noderecord.record_time(NOW - dt.timedelta(hours=2)))
        record = first
        if name == broken:  # the next verification: someone deleted a rule on this node
            failed = JobInfo(name=f"na-pci-{index}-v", policy="pci", node=name, action="apply", budget="update",
                             bundle=bundle.hash, outcome="failed", created=0.0)
            record = noderecord.build_record(
                failed, facts, first,
                result_line(bundle.hash, False, len(listings) - 1, f"verification: rule not loaded: {missing}",
                            lost=12, growth=12),
                noderecord.record_time(NOW - dt.timedelta(minutes=30)))
        node["metadata"]["annotations"][state_annotation("pci")] = noderecord.record_text(record)
    status = {"observedGeneration": 1, "bundle": bundle.hash}
    items = [{**POLICY, "metadata": {**POLICY["metadata"], "generation": 1}, "status": status}, *nodes]
    return {"apiVersion": "v1", "kind": "List", "items": items}, bundle.hash, broken, missing


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, str, str, str]:
    document, bundle, broken, missing = cluster()
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(document))
    return path, bundle, broken, missing


def run(*args: str) -> str:
    result = CliRunner().invoke(main, ["report", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_json_report_shows_each_user_node_and_the_missing_requirement(saved) -> None:
    path, bundle, broken, _ = saved
    report = json.loads(run("--from", str(path), "--format", "json", "--at", NOW.isoformat()))
    rows = {r["node"]: r for r in report["rows"]}
    assert len(rows) == 6  # user1 and user2 pools, 3 nodes each; system pool and Windows not selected
    assert all(n.startswith(("aks-user1-", "aks-user2-")) for n in rows)
    pci = next(p for p in packs.PACKS if p.name == "pci-dss")
    every = [r.id for r in pci.requirements]
    for name, row in rows.items():
        assert row["bundle"] == bundle == row["current_bundle"]
        assert (row["audit_version"], row["distro"], row["enabled"]) == ("3.0.7", "ubuntu-22.04", 1)
        (evidence,) = row["packs"]
        assert evidence["pack"] == "pci-dss" and "PCI DSS v3.1" in evidence["benchmark"]
        if name == broken:
            assert row["status"] == "failed" and row["rules_loaded"] == row["rules_expected"] - 1
            assert (row["lost"], row["lost_growth"]) == (12, 12)
            assert evidence["missing"] == [MISSING_REQ] and evidence["in_force"] == []
            assert sorted(evidence["unverified"]) == sorted(set(every) - {MISSING_REQ})
            assert any("names only the first missing rule" in g for g in row["gaps"])
            assert any("dropped 12 records" in g for g in row["gaps"])
            assert row["last_verified"] == (NOW - dt.timedelta(hours=2)).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z")
        else:
            assert row["status"] == "verified" and row["rules_loaded"] == row["rules_expected"] == 27
            assert evidence["in_force"] == every and evidence["missing"] == []
    uncovered = report["uncovered_nodes"]
    assert len(uncovered) == 4 and any(n.startswith("aks-system-") for n in uncovered)
    assert any("keeps only its latest record" in g for g in report["gaps"])
    assert any("AgentReady" in g for g in report["gaps"])


def test_csv_and_markdown_carry_the_same_evidence(saved, tmp_path: Path) -> None:
    path, _, broken, _ = saved
    out = tmp_path / "evidence.csv"
    result = CliRunner().invoke(main, ["report", "--from", str(path), "--format", "csv", "-o", str(out),
                                       "--at", NOW.isoformat()])
    assert result.exit_code == 0 and "6 node/policy rows" in result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 6
    bad = next(r for r in rows if r["node"] == broken)
    assert bad["status"] == "failed" and bad["requirements_missing"] == f"pci-dss:{MISSING_REQ}"
    good = next(r for r in rows if r["node"] != broken)
    assert good["requirements_in_force"].split() == [f"pci-dss:{r}" for r in
                                                     ("10.2.2", "10.2.3", "10.2.5.b", "10.2.5.c", "10.4.2.b", "10.5.5")]
    markdown = run("--from", str(path), "--at", NOW.isoformat())
    assert f"| {MISSING_REQ} | 5 | {broken} | - |" in markdown
    assert "## Where the records do not reach" in markdown
    assert f"- {broken} / pci: last verification failed: verification: rule not loaded:" in markdown


def test_a_report_for_a_time_before_the_records_says_so(saved) -> None:
    path, _, _, _ = saved
    first = NOW - dt.timedelta(days=3)
    report = json.loads(run("--from", str(path), "--format", "json", "--at", first.isoformat()))
    assert all(any("after the report time" in g for g in r["gaps"]) for r in report["rows"])
    assert {r["status"] for r in report["rows"]} == {"after-report-time", "failed"}


def test_overdue_verification_is_a_gap(saved) -> None:
    path, _, broken, _ = saved
    later = NOW + dt.timedelta(hours=20)
    report = json.loads(run("--from", str(path), "--format", "json", "--at", later.isoformat()))
    statuses = {r["node"]: r["status"] for r in report["rows"]}
    assert statuses.pop(broken) == "failed" and set(statuses.values()) == {"overdue"}


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["report", "--from", str(tmp_path / "nope.json")])
    assert missing.exit_code == 1 and "nope.json: cannot read" in missing.output
    (tmp_path / "bad.json").write_text("{")
    bad = runner.invoke(main, ["report", "--from", str(tmp_path / "bad.json")])
    assert bad.exit_code == 1 and "not JSON" in bad.output
    (tmp_path / "empty.json").write_text('{"kind": "List", "items": []}')
    empty = runner.invoke(main, ["report", "--from", str(tmp_path / "empty.json")])
    assert empty.exit_code == 1 and "no NodeAuditPolicy found" in empty.output
    at = runner.invoke(main, ["report", "--from", str(tmp_path / "empty.json"), "--at", "yesterday"])
    assert at.exit_code == 2 and "not an RFC 3339 time" in at.output
