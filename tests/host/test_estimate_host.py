"""`nodeaudit estimate` on the real kernel: its byte counts against what audisp-syslog (raw) and the
nodeaudit dispatcher (json) really ship, and the kernel put back exactly as it was found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter

import pytest

from nodeaudit.cli.estimate import _serial, measure
from nodeaudit.core import estimate as est
from nodeaudit.core.policy import NodeAuditPolicy
from nodeaudit.hostaudit.netlink import EstimateError, Record
from tests.host import costlib, hostlib
from tests.policies import policy_doc

TRUE = "/usr/bin/true"
RUNS = 150


@pytest.fixture(scope="module")
def auditctl(ctl_root: hostlib.Rootfs, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The control root's real auditctl as a command on this machine, which needs no audit package
    of its own (installing auditd here would start a daemon the host tests then refuse to run beside)."""
    wrapper = tmp_path_factory.mktemp("bin") / "auditctl"
    wrapper.write_text(f'#!/bin/sh\nexec chroot {ctl_root.path} auditctl "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def policy(volume: str, **spec: object) -> NodeAuditPolicy:
    """The records themselves are counted (raw form) unless a test asks for the JSON form."""
    spec.setdefault("syslog", {"format": "raw"})
    return NodeAuditPolicy.model_validate(policy_doc("procmon", [], presets=["procmon"], volume=volume, **spec))


def stop_daemon(host, root: hostlib.Rootfs) -> None:
    hostlib.kill_pids(root.processes())
    host.audit.auditctl("-D")
    host.audit.auditctl("-e", "0")
    assert host.audit.status()["pid"] == "0"


@pytest.mark.parametrize(("volume", "fmt"), [("lean", "raw"), ("forensic", "raw"), ("lean", "json")])
def test_estimate_bytes_match_what_audisp_syslog_ships(host, volume, fmt, auditctl):
    marker = f"m{uuid.uuid4().hex[:16]}"
    # 1. The real path: apply.sh, auditd 3.0.9, audisp-syslog (raw) or the dispatcher (json) -> /dev/log.
    root = host.root("python" if fmt == "json" else "auditd")
    devlog = host.devlog(root)
    bundle = hostlib.render_policy_bundle(host.bundle(volume), policy_doc("procmon", [], presets=["procmon"],
                                                                          volume=volume, syslog={"format": fmt}))
    res = root.run_bundle(bundle)
    assert res.result and res.result["ok"] and res.result["syslogFormat"] == fmt, res
    with costlib.Draining(devlog):
        costlib.exec_loop(root, RUNS, "/bin/true", marker)
        if fmt == "json":
            costlib.collect_until(devlog, lambda m: len(json_execs(m, marker)) >= RUNS)
    if fmt == "json":
        shipped_json = json_execs(devlog.messages, marker)
        assert len(shipped_json) == RUNS
        real_bytes = sum(len(m.encode()) for m in shipped_json) / RUNS
        real_types = Counter({"messages": RUNS})
    else:
        costlib.collect_until(devlog, lambda m: len(costlib.events_of(m, TRUE, marker)) >= RUNS)
        shipped = costlib.events_of(devlog.messages, TRUE, marker)
        assert len(shipped) == RUNS
        real_bytes = sum(e.bytes for e in shipped) / RUNS
        real_types = Counter(t for e in shipped for t in e.types)
    stop_daemon(host, root)

    # 2. estimate: the same execs (cwd / as in the root), read from the audit netlink socket.
    script = f'cd / && i=0; while [ $i -lt {RUNS} ]; do /bin/true {marker}; i=$((i+1)); done'
    measured, problems = measure(policy(volume, syslog={"format": fmt}), command=script, lock_path=None,
                                 auditctl=auditctl)
    assert problems == []
    by_serial: dict[str, list[tuple[Record, int]]] = {}
    for record, size in measured.records:
        by_serial.setdefault(_serial(record.text), []).append((record, size))
    mine = [recs for recs in by_serial.values()
            if any(r.type == 1300 and f'exe="{TRUE}"' in r.text for r, _ in recs)
            and any(r.type == 1309 and marker in r.text for r, _ in recs)]
    assert len(mine) == RUNS
    est_bytes = sum(size for recs in mine for _, size in recs) / RUNS
    if fmt == "json":
        est_types = Counter({"messages": sum(1 for recs in mine for _, size in recs if size)})
    else:
        est_types = Counter(est.type_name(r.type) for recs in mine for r, _ in recs)
    print(f"{volume} {fmt}: shipped {real_bytes:.1f} bytes/exec, estimate {est_bytes:.1f}; {dict(real_types)}")
    assert est_types == real_types
    # pid/ppid/inode/serial digits and the timestamp's day may differ by a byte or two per record.
    assert abs(est_bytes - real_bytes) <= 0.01 * real_bytes, (est_bytes, real_bytes)
    assert measured.sample.execs == RUNS + 1  # the workload's shell is an exec of the workload too
    assert measured.sample.records_per_exec == pytest.approx(sum(real_types.values()) / RUNS, abs=0.05)


def json_execs(messages: list[str], marker: str) -> list[str]:
    """The dispatcher's datagrams for the marker's execs of /usr/bin/true."""
    return [m for m in messages if ">nodeaudit: {" in m and f'"exe":"{TRUE}"' in m and f'"{marker}"' in m]


def test_estimate_restores_foreign_rules_enabled_flag_and_limits_and_reports_losses(host, auditctl):
    foreign = "-a always,exit -F arch=b64 -S unlinkat -F key=foreign"
    assert host.audit.auditctl(*foreign.replace("-F key=", "-k ").split()).returncode == 0
    host.audit.auditctl("-e", "1")
    host.audit.auditctl("-r", "777")
    before = host.audit.status()
    # A rate limit of 5 records/s makes the kernel drop most of 2 records x 300 execs: counted as lost.
    measured, problems = measure(policy("lean", auditd={"rateLimit": 5}), execs=300, lock_path=None, auditctl=auditctl)
    assert problems == []
    after = host.audit.status()
    assert host.audit.rules() == [foreign]
    for key in ("enabled", "pid", "rate_limit", "backlog_limit", "backlog_wait_time", "failure"):
        assert after[key] == before[key], key
    assert measured.sample.lost > 0
    assert measured.sample.records < 2 * 300


def test_estimate_large_sample_delivers_every_record(host, auditctl):
    """5,000 execs: the socket is drained while the loop runs, so the kernel neither blocks nor drops."""
    measured, problems = measure(policy("lean"), execs=5000, lock_path=None, auditctl=auditctl)
    assert problems == []
    s = measured.sample
    assert s.lost == 0, s
    assert s.execs == 5000 and s.exec_records == 2 * 5000, s


def test_estimate_refuses_while_an_audit_daemon_runs(host, auditctl):
    root = host.root()
    bundle = hostlib.render_policy_bundle(host.bundle("d"), policy_doc("other", ["-w /etc/shadow -p wa -k s"]))
    assert root.run_bundle(bundle).result["ok"]
    before = (host.audit.status(), host.audit.rules())
    with pytest.raises(EstimateError, match="another audit daemon is registered"):
        measure(policy("lean"), execs=10, lock_path=None, auditctl=auditctl)
    assert (host.audit.status()["pid"], host.audit.rules()) == (before[0]["pid"], before[1])


def test_estimate_command_end_to_end(ctl_root, auditctl, tmp_path):
    """The real command in its own process, taking the kernel-audit lock itself."""
    audit = hostlib.KernelAudit(ctl=ctl_root)
    try:
        audit.open()
    except hostlib.KernelAuditUnavailable as exc:
        pytest.skip(str(exc))
    before = audit.status()
    audit.close()
    doc = tmp_path / "p.yaml"
    doc.write_text(json.dumps(policy_doc("procmon", [], presets=["procmon"], volume="lean",
                                         exclude={"aksNoise": True}, syslog={"format": "raw"})))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from nodeaudit.cli.estimate import estimate; estimate()", str(doc),
             "--execs", "400", "--nodes", "20", "--price-per-gb", "2", "--json"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PATH": f"{os.path.dirname(auditctl)}:{os.environ.get('PATH', '')}"})
    finally:
        audit = hostlib.KernelAudit(ctl=ctl_root)
        audit.open()  # fails (KernelAuditBusy) if the command left rules or a listener behind
        after = audit.status()
        problems = audit.close()
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["restoreProblems"] == []
    assert {k: after[k] for k in ("enabled", "pid", "rate_limit", "backlog_limit")} == \
        {k: before[k] for k in ("enabled", "pid", "rate_limit", "backlog_limit")}
    assert problems == []
    s = data["sample"]
    assert s["execs"] == 400 and s["recordsPerExec"] == 2.0, s
    assert 400 < s["bytesPerExec"] < 700, s
    row = data["projections"][1]  # 10 execs/s
    assert row["bytesPerSecond"] >= 10 * s["bytesPerExec"] * 0.999
    assert row["gbPerDayPerNode"] == pytest.approx(row["bytesPerSecond"] * 86400 / 1e9, rel=1e-3)
    assert row["gbPerDayCluster"] == pytest.approx(20 * row["gbPerDayPerNode"], rel=1e-3)
    assert row["costPerDayCluster"] == pytest.approx(2 * row["gbPerDayCluster"], rel=1e-3)
