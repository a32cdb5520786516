"""Evidence for auditors: which node ran which policy's rules, as far as the cluster's records go.

Why pure: the report is computed from objects (NodeAuditPolicies and Nodes as `kubectl get nap,nodes
-o json` returns them, or as the API serves them) and a point in time; reading them is the CLI's
job. Everything a row says comes from the node's record (the annotation `nodeaudit.io/<policy>`
that the operator writes from each Job's verified result line) and from the policy's bundle,
rendered here again from the policy, so the expected rules and keys are exactly what the node
was asked to load.

What the records do not reach is said, never guessed: a node keeps only its latest record, so the
report proves the state at each node's last verification and nothing about earlier times; a
failed verification names only the first missing rule; records dropped by the kernel show only as
the lost counter's growth; delivery to Log Analytics is the agent check's (AgentReady), not this.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nodeaudit.core import packs as packs_mod
from nodeaudit.core.bundle import render_bundle
from nodeaudit.core.nodes import NodeFacts, facts_from_node, matches
from nodeaudit.core.policy import NodeAuditPolicy, PolicyError, parse_duration, parse_policy
from nodeaudit.core.rollout import parse_time

_MISSING = "verification: rule not loaded: "


@dataclass
class PackEvidence:
    """One compliance pack of one policy on one node: which requirement ids are in force."""

    pack: str
    benchmark: str
    in_force: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One node under one policy."""

    node: str
    policy: str
    pool: str
    status: str  # verified | failed | stale-bundle | overdue | never-run
    bundle: str | None
    current_bundle: str
    rules_expected: int
    rules_loaded: int | None
    audit_version: str | None
    distro: str | None
    last_verified: str | None
    last_result_time: str | None
    lost: int | None
    lost_growth: int | None
    enabled: int | None
    error: str | None
    packs: list[PackEvidence] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)


@dataclass
class Report:
    generated: str
    at: str
    rows: list[Row]
    gaps: list[str]
    policies: list[str]
    uncovered_nodes: list[str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"


def split_objects(document: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(policies, nodes) of a `kubectl get nap,nodes -o json` List (or one object of either kind)."""
    items = document.get("items") if document.get("kind") == "List" or "items" in document else [document]
    policies, nodes = [], []
    for item in items or []:
        if not isinstance(item, dict):
            continue
        if item.get("kind") == "NodeAuditPolicy":
            policies.append(item)
        elif item.get("kind") == "Node":
            nodes.append(item)
    return policies, nodes


def _key_of_listing(line: str) -> str | None:
    tokens = line.split()
    for i, token in enumerate(tokens):
        if token.startswith("key="):
            return token[4:]
        if token == "-k" and i + 1 < len(tokens):
            return tokens[i + 1]
    return None


def _pack_evidence(policy: NodeAuditPolicy, status: str, record: Mapping[str, Any] | None) -> list[PackEvidence]:
    out = []
    missing_key = None
    error = str((record or {}).get("error") or "")
    if _MISSING in error:
        missing_key = _key_of_listing(error.split(_MISSING, 1)[1])
    for name in policy.spec.presets:
        pack = next((p for p in packs_mod.PACKS if p.name == name), None)
        if pack is None:
            continue
        evidence = PackEvidence(pack.name, pack.benchmark)
        missing_req = packs_mod.requirement_of(missing_key, pack) if missing_key else None
        for requirement in pack.requirements:
            if status == "verified":
                evidence.in_force.append(requirement.id)
            elif missing_req is not None and requirement.id == missing_req.id:
                evidence.missing.append(requirement.id)
            else:
                evidence.unverified.append(requirement.id)
        out.append(evidence)
    return out


def _row(policy: NodeAuditPolicy, node: NodeFacts, current: str, expected: int, at: dt.datetime) -> Row:
    record = node.record(policy.name)
    interval = parse_duration(policy.spec.verify_interval)
    gaps: list[str] = []
    if record is None:
        status = "never-run"
        gaps.append("no record: no Job of this policy has finished on this node")
    else:
        time = parse_time(record.get("time"))
        last_ok = parse_time(record.get("lastSuccess"))
        if record.get("bundle") != current:
            status = "stale-bundle"
            gaps.append(f"the node's last result is for bundle {record.get('bundle')}, not the current {current}")
        elif record.get("result") != "ok":
            status = "failed"
            gaps.append(f"last verification failed: {record.get('error') or 'no message'}")
            if _MISSING in str(record.get("error") or ""):
                gaps.append("a failed verification names only the first missing rule: other requirements unverified")
        elif last_ok is not None and at - last_ok > interval * 2:
            status = "overdue"
            gaps.append(f"last verified {record.get('lastSuccess')}, more than twice verifyInterval "
                        f"({policy.spec.verify_interval}) before {at.isoformat()}")
        else:
            status = "verified"
        if time is not None and time > at:
            gaps.append(f"the record is from {record.get('time')}, after the report time: the state at "
                        f"{at.isoformat()} is not recorded (a node keeps only its latest record)")
            status = "after-report-time" if status == "verified" else status
        if last_ok is None:
            gaps.append("this node never verified this policy successfully")
        if int(record.get("lostGrowth") or 0) > 0:
            gaps.append(f"the kernel dropped {record.get('lostGrowth')} records since the previous run "
                        f"(lost counter {record.get('lost')}): events in that window may be missing")
        enabled = record.get("enabled")
        if enabled is not None and int(enabled) != 1 and not (int(enabled) == 2 and policy.spec.unsafe.allow_immutable):
            gaps.append(f"kernel audit enabled flag was {enabled}")
    rec = record or {}
    return Row(
        node=node.name, policy=policy.name, pool=node.pool, status=status,
        bundle=rec.get("bundle"), current_bundle=current, rules_expected=expected,
        rules_loaded=rec.get("rulesLoaded"), audit_version=rec.get("auditVersion"), distro=rec.get("distro"),
        last_verified=rec.get("lastSuccess"), last_result_time=rec.get("time"), lost=rec.get("lost"),
        lost_growth=rec.get("lostGrowth"), enabled=rec.get("enabled"), error=rec.get("error"),
        packs=_pack_evidence(policy, status, record), gaps=gaps,
    )


def build_report(policy_objects: Iterable[Mapping[str, Any]], node_objects: Iterable[Mapping[str, Any]],
                 *, at: dt.datetime, generated: dt.datetime) -> Report:
    """Rows for every (matching Linux node, policy), and the gaps of the evidence."""
    nodes = [facts_from_node(n) for n in node_objects]
    rows: list[Row] = []
    gaps = [
        "A node keeps only its latest record per policy: this report shows each node's state at its last "
        "verification and proves nothing about earlier times; keep the reports (or the Job results in "
        "Log Analytics) as the history.",
        "Delivery of the records to Log Analytics is not in these records: see the policy's AgentReady "
        "condition (`nodeaudit check-agent`).",
    ]
    names = []
    covered: set[str] = set()
    for obj in policy_objects:
        name = str((obj.get("metadata") or {}).get("name") or "?")
        try:
            policy = parse_policy(dict(obj))
        except PolicyError as error:
            gaps.append(f"policy {name} is not valid here ({'; '.join(error.problems)[:300]}): not reported")
            continue
        names.append(policy.name)
        bundle = render_bundle(policy)
        status_bundle = ((obj.get("status") or {}).get("bundle"))
        if status_bundle and status_bundle != bundle.hash:
            gaps.append(f"policy {policy.name}: the cluster's status.bundle {status_bundle} differs from the bundle "
                        f"this nodeaudit renders ({bundle.hash}): compare versions before trusting the rows")
        current = status_bundle or bundle.hash
        expected = sum(1 for r in bundle.rules if r.listing is not None)
        selector = policy.spec.node_selector.model_dump(by_alias=True)
        for node in sorted(nodes, key=lambda n: n.name):
            if not node.eligible or not matches(selector, node.labels):
                continue
            covered.add(node.name)
            rows.append(_row(policy, node, current, expected, at))
    uncovered = sorted(n.name for n in nodes if n.name not in covered)
    if uncovered:
        gaps.append(f"{len(uncovered)} node(s) no policy covers (Windows, virtual or not selected): "
                    + ", ".join(uncovered))
    return Report(generated=generated.isoformat(), at=at.isoformat(), rows=rows, gaps=gaps,
                  policies=names, uncovered_nodes=uncovered)


CSV_COLUMNS = ("node", "policy", "pool", "status", "bundle", "current_bundle", "rules_expected", "rules_loaded",
               "audit_version", "distro", "last_verified", "lost", "lost_growth", "enabled",
               "requirements_in_force", "requirements_missing", "requirements_unverified", "gaps")


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        def ids(attr: str, row: Row = row) -> str:
            return " ".join(f"{p.pack}:{i}" for p in row.packs for i in getattr(p, attr))

        writer.writerow([row.node, row.policy, row.pool, row.status, row.bundle or "", row.current_bundle,
                         row.rules_expected, _blank(row.rules_loaded), row.audit_version or "", row.distro or "",
                         row.last_verified or "", _blank(row.lost), _blank(row.lost_growth), _blank(row.enabled),
                         ids("in_force"), ids("missing"), ids("unverified"), " | ".join(row.gaps)])
    return out.getvalue()


def _blank(value: object) -> str:
    return "" if value is None else str(value)


def to_markdown(report: Report) -> str:
    lines = [f"# nodeaudit report, as of {report.at}", "", f"Generated {report.generated}. Policies: "
             f"{', '.join(report.policies) or 'none'}.", "",
             "| node | policy | status | bundle | rules loaded | auditd | distro | last verified | lost (growth) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report.rows:
        bundle = (row.bundle or "-")[:19]
        loaded = f"{_blank(row.rules_loaded) or '-'}/{row.rules_expected}"
        lost = "-" if row.lost is None else f"{row.lost} ({_blank(row.lost_growth) or '?'})"
        lines.append(f"| {row.node} | {row.policy} | {row.status} | {bundle} | {loaded} | {row.audit_version or '-'} "
                     f"| {row.distro or '-'} | {row.last_verified or '-'} | {lost} |")
    packs = _pack_summary(report.rows)
    for (policy, pack, benchmark), per_req in packs.items():
        lines += ["", f"## {pack} in policy {policy} ({benchmark})", "",
                  "| requirement | in force on | missing on | unverified on |", "|---|---|---|---|"]
        for rid, (ok, missing, unverified) in per_req.items():
            lines.append(f"| {rid} | {len(ok)} | {', '.join(missing) or '-'} | {', '.join(unverified) or '-'} |")
    lines += ["", "## Where the records do not reach", ""]
    lines += [f"- {gap}" for gap in report.gaps]
    for row in report.rows:
        lines += [f"- {row.node} / {row.policy}: {gap}" for gap in row.gaps]
    return "\n".join(lines) + "\n"


def _pack_summary(rows: Sequence[Row]) -> dict[tuple[str, str, str], dict[str, tuple[list[str], list[str], list[str]]]]:
    out: dict[tuple[str, str, str], dict[str, tuple[list[str], list[str], list[str]]]] = {}
    for row in rows:
        for evidence in row.packs:
            pack = next(p for p in packs_mod.PACKS if p.name == evidence.pack)
            per = out.setdefault((row.policy, evidence.pack, evidence.benchmark),
                                 {r.id: ([], [], []) for r in pack.requirements})
            for rid in evidence.in_force:
                per[rid][0].append(row.node)
            for rid in evidence.missing:
                per[rid][1].append(row.node)
            for rid in evidence.unverified:
                per[rid][2].append(row.node)
    return out


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return report.to_json()
    if fmt == "csv":
        return to_csv(report)
    if fmt == "markdown":
        return to_markdown(report)
    raise ValueError(f"unknown format {fmt!r} (json, csv, markdown)")

