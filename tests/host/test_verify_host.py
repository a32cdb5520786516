"""Verification on the node checks the kernel's enabled flag and reports the lost counter's growth.

Why: rules in place mean nothing when kernel auditing is off, and `auditctl -e 0` (an intruder's,
or another tool's) was invisible; records the kernel drops (rate limit, full backlog) show only as
a counter that grows until reboot, so each result line says how much it grew since the last one.
"""

from __future__ import annotations

import pytest

from tests.host import hostlib
from tests.policies import policy_doc

pytestmark = pytest.mark.host


def test_verification_fails_while_auditing_is_off_and_reports_lost_growth(host) -> None:
    root = host.root()
    bundle = hostlib.render_policy_bundle(host.bundle("verify"), policy_doc(
        "procmon", [], presets=["procmon"], volume="lean"))
    first = root.run_bundle(bundle)
    assert first.rc == 0 and first.result and first.result["ok"] is True, first
    assert first.result["enabled"] == 1 and first.result["lostGrowth"] == 0

    # Someone switches auditing off: the next verification says so and fails.
    assert host.audit.auditctl("-e", "0").returncode == 0
    off = root.run_bundle(bundle)
    assert off.rc != 0 and off.result and off.result["ok"] is False, off
    assert "kernel auditing is off (enabled 0)" in str(off.result["message"])
    assert off.result["enabled"] == 0

    # Back on, with a rate limit of 1 record/s and a burst of execs: the kernel drops records,
    # and the next result line reports exactly how much the lost counter grew meanwhile.
    assert host.audit.auditctl("-e", "1").returncode == 0
    before = int(host.audit.status()["lost"])
    root.run("sh", "-c", "i=0; while [ $i -lt 60 ]; do /bin/true; i=$((i+1)); done")  # warm: nothing limited
    host.audit.auditctl("-r", "1")
    root.run("sh", "-c", "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done")
    host.audit.auditctl("-r", "0")
    after = int(host.audit.status()["lost"])
    assert after > before, (before, after)
    again = root.run_bundle(bundle)
    assert again.rc == 0 and again.result and again.result["ok"] is True, again
    grown = int(again.result["lost"]) - int(off.result["lost"])
    assert again.result["lostGrowth"] == grown >= after - before
    # Nothing lost since: the next verification reports 0.
    last = root.run_bundle(bundle)
    assert last.result and last.result["lostGrowth"] == int(last.result["lost"]) - int(again.result["lost"])


def test_audit_off_is_accepted_on_the_node_only_when_the_policy_allows_it(host) -> None:
    root = host.root()
    bundle = hostlib.render_policy_bundle(host.bundle("off"), policy_doc(
        "quiet", ["-e 0"], unsafe={"allowAuditOff": True}))
    res = root.run_bundle(bundle)
    assert res.rc == 0 and res.result and res.result["ok"] is True, res
    assert res.result["enabled"] == 0
