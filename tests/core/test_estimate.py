"""The pure cost projections and the syslog message model of nodeaudit.core.estimate."""

from __future__ import annotations

import os

import pytest

from nodeaudit.core import estimate as est
from nodeaudit.hostaudit import guard as kernel_guard
from nodeaudit.hostaudit import netlink as auditnl

# A record as auditd 3.0.9 + audisp-syslog shipped it on this machine (host tests compare the
# whole pipeline; this pins the format).
KERNEL_SYSCALL = (
    "audit(1795706836.643:22061): arch=c000003e syscall=59 success=yes exit=0 a0=7fedbecc5050 "
    "a1=7fedbece20d0 a2=7fedbecc4fb0 a3=8 items=2 ppid=30589 pid=11979 auid=4294967295 uid=0 gid=0 "
    "euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm=\"unshare\" "
    "exe=\"/usr/bin/unshare\" key=\"procmon\""
)
SHIPPED_SYSCALL = (
    "<86>Nov 26 15:27:16 audispd: type=SYSCALL msg=" + KERNEL_SYSCALL + " ARCH=x86_64 SYSCALL=execve "
    'AUID="unset" UID="root" GID="root" EUID="root" SUID="root" FSUID="root" EGID="root" SGID="root" '
    'FSGID="root"\n'
)


def root_only(number: int) -> str | None:
    return "root" if number == 0 else None


def test_syslog_message_reproduces_audisp_syslog_byte_for_byte():
    msg = est.syslog_message("SYSCALL", KERNEL_SYSCALL, timestamp="Nov 26 15:27:16",
                             users=root_only, groups=root_only)
    assert msg == SHIPPED_SYSCALL
    assert est.syslog_message_size("SYSCALL", KERNEL_SYSCALL, users=root_only, groups=root_only) == 487


def test_eoe_and_unknown_ids_and_other_facilities():
    assert est.syslog_message("EOE", "audit(1.2:3): ", timestamp="Nov  1 00:00:00") == \
        "<86>Nov  1 00:00:00 audispd: type=EOE msg=audit(1.2:3):\n"
    assert est.enrichment("ouid=1234 ogid=0", groups=root_only) == 'OUID="unknown(1234)" OGID="root"'
    assert est.enrichment("arch=40000003 syscall=11") == "ARCH=i386 SYSCALL=execve"
    assert est.syslog_pri("LOG_LOCAL3", "LOG_WARNING") == 19 * 8 + 4
    assert est.syslog_header_length() == len("<86>Nov 26 15:27:16 audispd: ")
    assert est.syslog_header_length("LOG_KERN", "LOG_EMERG") == len("<0>Nov 26 15:27:16 audispd: ")
    assert est.type_name(1309) == "EXECVE" and est.type_name(9999) == "UNKNOWN[9999]"
    assert "ARCH" not in est.syslog_message("EXECVE", 'audit(1.2:3): argc=1 a0="x"', enriched=False)


def test_observed_projection_scales_per_node_and_cluster_and_prices():
    sample = est.Sample(seconds=10, records=1000, bytes=500_000)
    (row,) = est.project(sample, nodes=50, price_per_gb=2.5)
    assert row.label == "observed"
    assert row.bytes_per_second == 50_000
    assert row.gb_per_day_node == pytest.approx(50_000 * 86_400 / 1e9)  # 4.32 GB/day
    assert row.gb_per_day_cluster == pytest.approx(4.32 * 50)
    assert row.cost_per_day_cluster == pytest.approx(4.32 * 50 * 2.5)
    assert row.cost_per_30_days_cluster == pytest.approx(4.32 * 50 * 2.5 * 30)
    assert est.project(sample)[0].cost_per_day_cluster is None


def test_workload_projection_uses_bytes_per_exec_plus_background():
    # 1,000 execs at 600 bytes and 2 records each, plus 20 background records (8,000 bytes) in 4 s.
    sample = est.Sample(seconds=4, records=2020, bytes=608_000, execs=1000, exec_records=2000,
                        exec_bytes=600_000)
    assert sample.records_per_exec == 2 and sample.bytes_per_exec == 600
    assert sample.background_records == 20 and sample.background_bytes_per_second == 2000
    rows = est.project(sample, nodes=3, exec_rates=(0, 10))
    assert [r.label for r in rows] == ["0 execs/s + background", "10 execs/s + background"]
    assert rows[0].bytes_per_second == 2000 and rows[0].records_per_second == 5
    assert rows[1].bytes_per_second == 10 * 600 + 2000
    assert rows[1].records_per_second == 25
    assert rows[1].gb_per_day_cluster == pytest.approx(3 * 8000 * 86_400 / 1e9)
    data = est.report_dict("p", "lean", sample, rows, "w", "m")
    assert data["sample"]["bytesPerExec"] == 600 and data["projections"][1]["nodes"] == 3
    text = est.format_report(data)
    assert "2.00 records, 600 bytes" in text and "3 nodes" in text and "cost/day" not in text


@pytest.mark.parametrize("bad", [
    dict(seconds=0, records=1, bytes=1),
    dict(seconds=1, records=-1, bytes=1),
    dict(seconds=1, records=1, bytes=10, execs=1, exec_records=2, exec_bytes=5),
])
def test_sample_rejects_impossible_counts(bad):
    with pytest.raises(ValueError):
        est.Sample(**bad)


def test_projection_rejects_bad_inputs():
    sample = est.Sample(seconds=1, records=1, bytes=1)
    with pytest.raises(ValueError):
        est.project(sample, nodes=0)
    with pytest.raises(ValueError):
        est.project(sample, price_per_gb=-1)


def test_delete_args_undo_what_was_added():
    assert kernel_guard.delete_args("-a always,exit -F arch=b64 -S execve -k procmon") == \
        ["-d", "always,exit", "-F", "arch=b64", "-S", "execve", "-k", "procmon"]
    assert kernel_guard.delete_args("-w /etc/passwd -p wa -k identity") == ["-W", "/etc/passwd", "-p", "wa", "-k", "identity"]
    with pytest.raises(ValueError):
        kernel_guard.delete_args("-b 8192")


def test_session_refuses_non_root_before_touching_anything(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # what netlink calls: os.geteuid
    session = auditnl.KernelAuditSession(rules=[], lock_path=None)
    with pytest.raises(auditnl.EstimateError, match="must run as root"):
        session.open()
    assert session.sock is None and session.added == []


def test_cli_rejects_two_workloads(tmp_path):
    from click.testing import CliRunner

    from nodeaudit.cli.estimate import estimate

    doc = tmp_path / "p.yaml"
    doc.write_text("apiVersion: nodeaudit.io/v1alpha1\nkind: NodeAuditPolicy\nmetadata: {name: p}\n"
                   "spec: {presets: [procmon], volume: lean}\n")
    res = CliRunner().invoke(estimate, [str(doc), "--execs", "5", "--seconds", "1"])
    assert res.exit_code == 2 and "one of --execs, --workload, --seconds" in res.output
