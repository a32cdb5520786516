"""The kernel-audit guard on the real kernel: someone else's rules stay (estimate's mode), or are a
refusal (the demo's and the tests' mode); the enabled flag and the limits come back as found."""

from __future__ import annotations

import os

import pytest

from nodeaudit.hostaudit import guard as kernel_guard
from nodeaudit.hostaudit import lock as kernellock
from tests.host import hostlib

FOREIGN = ("-w", "/etc/hostname", "-p", "wa", "-k", "nodeaudit-test-foreign")
MINE = "-a always,exit -F arch=b64 -S execve -F key=nodeaudit-test-mine"
STATE = ("enabled", "rate_limit", "backlog_limit", "backlog_wait_time", "failure")


def test_keep_rules_deletes_only_its_own_and_restores_flag_and_limits(host, ctl_root: hostlib.Rootfs) -> None:
    assert host.audit.auditctl(*FOREIGN).returncode == 0
    foreign = host.audit.rules()
    before = host.audit.status()
    guard = kernel_guard.KernelAuditGuard(ctl_root.path, lock_path=None, keep_rules=True)
    guard.open()  # the lock is the host fixture's
    assert guard.initial_rules == foreign
    assert guard.add_rule(MINE).returncode == 0
    for args in (("-e", "1"), ("-r", "777"), ("-b", "321"), ("--backlog_wait_time", "1234")):
        assert guard.auditctl(*args).returncode == 0
    assert len(host.audit.rules()) == len(foreign) + 1
    assert guard.close() == []
    assert host.audit.rules() == foreign
    after = host.audit.status()
    assert {k: after.get(k) for k in STATE} == {k: before.get(k) for k in STATE}
    assert guard.close() == []  # twice is harmless


def test_without_keep_rules_someone_elses_rules_are_a_refusal(host, ctl_root: hostlib.Rootfs) -> None:
    assert host.audit.auditctl(*FOREIGN).returncode == 0
    foreign, before = host.audit.rules(), host.audit.status()
    guard = kernel_guard.KernelAuditGuard(ctl_root.path, lock_path=None)
    with pytest.raises(kernel_guard.KernelAuditBusy, match="already has audit rules loaded by someone else"):
        guard.open()
    assert guard.close() == []  # a refusal restores nothing: their state stays
    assert (host.audit.rules(), host.audit.status().get("enabled")) == (foreign, before.get("enabled"))


def test_a_held_lock_is_a_refusal(ctl_root: hostlib.Rootfs, tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("kernel audit needs root")
    lock = str(tmp_path / "kernel-audit.lock")
    holder = kernellock.acquire(lock, timeout=1)
    try:
        guard = kernel_guard.KernelAuditGuard(ctl_root.path, lock_path=lock, lock_timeout=0.3)
        with pytest.raises(kernel_guard.KernelAuditBusy, match="held by another kernel-audit user"):
            guard.open()
    finally:
        holder.close()
