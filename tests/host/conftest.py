"""Fixtures for host tests: cached Debian roots, the kernel-audit lock and its teardown.

`host` is the one fixture a host test needs: it holds the machine-wide kernel-audit lock from
set-up to teardown, hands out fresh roots (`host.root("fresh")` without auditd, `host.root()` with
it) and syslog listeners, and in teardown (also after a failure) kills every process started in
those roots by PID, flushes the kernel rules, disables audit, restores the limits it found, and
deletes the roots. It skips only when we are not root or `auditctl -s` cannot reach the kernel.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.host import hostlib


@pytest.fixture(scope="session")
def rootfs_tarballs() -> dict[str, Path]:
    if os.geteuid() != 0:
        pytest.skip("host tests need root (kernel audit control, chroot, mmdebstrap)")
    if shutil.which("mmdebstrap") is None and not (hostlib.cache_dir() / "debian-bookworm-minbase.tar.zst").exists():
        pytest.fail("mmdebstrap is not installed (make apt-deps installs it)")
    return {"fresh": hostlib.base_tarball(), "auditd": hostlib.auditd_tarball(), "python": hostlib.python_tarball()}


@pytest.fixture(scope="session")
def ctl_root(rootfs_tarballs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[hostlib.Rootfs]:
    """A root with auditd whose auditctl the harness uses; never runs a daemon."""
    path = tmp_path_factory.mktemp("ctl") / "root"
    yield hostlib.Rootfs.extract(rootfs_tarballs["auditd"], path)
    shutil.rmtree(path, ignore_errors=True)


class HostSession:
    def __init__(self, audit: hostlib.KernelAudit, tarballs: dict[str, Path], tmp: Path):
        self.audit = audit
        self.tarballs = tarballs
        self.tmp = tmp
        self.devlogs: list[hostlib.DevLog] = []
        self._n = 0

    def root(self, kind: str = "auditd") -> hostlib.Rootfs:
        self._n += 1
        path = self.tmp / f"root{self._n}"
        # Registered before extraction so teardown covers a half-made root too.
        self.audit.roots.append(path)
        return hostlib.Rootfs.extract(self.tarballs[kind], path)

    def devlog(self, root: hostlib.Rootfs) -> hostlib.DevLog:
        listener = hostlib.DevLog(root)
        self.devlogs.append(listener)
        return listener

    def bundle(self, name: str) -> Path:
        return self.tmp / "bundles" / name


@pytest.fixture
def host(rootfs_tarballs: dict[str, Path], ctl_root: hostlib.Rootfs, tmp_path: Path) -> Iterator[HostSession]:
    audit = hostlib.KernelAudit(ctl=ctl_root)
    try:
        audit.open()
    except hostlib.KernelAuditUnavailable as exc:
        pytest.skip(str(exc))
    except hostlib.KernelAuditBusy as exc:
        pytest.fail(f"refusing to touch kernel audit: {exc}")
    session = HostSession(audit, rootfs_tarballs, tmp_path)
    problems: list[str] = []
    try:
        yield session
    finally:
        for listener in session.devlogs:
            listener.close()
        problems = audit.close()
        if not os.environ.get("NODEAUDIT_KEEP_ROOTS"):
            for root in audit.roots:
                if not hostlib.processes_rooted_in(root):
                    shutil.rmtree(root, ignore_errors=True)
    if problems:
        pytest.fail("teardown found: " + "; ".join(problems))
