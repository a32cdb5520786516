"""The kernel-audit opening the host benchmarks share: root, a control root, the lock, the guard."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from tests.host import hostlib


def open_kernel_audit(name: str, ctl_tarball: Path) -> tuple[Path, hostlib.KernelAudit] | int:
    """A fresh temp directory and an open ``KernelAudit`` (lock held, state recorded) for the benchmark
    ``name``; or, said on stderr, its exit code: 0 when this machine has no kernel audit to measure
    (skipped), 1 when it needs root or kernel audit is busy (refused)."""
    if os.geteuid() != 0:
        print(f"{name} needs root (kernel audit)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix=f"nodeaudit-{name.replace('_', '-')}-"))
    audit = hostlib.KernelAudit(ctl=hostlib.Rootfs.extract(ctl_tarball, tmp / "ctl"))
    try:
        audit.open()
    except hostlib.KernelAuditUnavailable as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"{name} skipped: {exc}", file=sys.stderr)
        return 0
    except hostlib.KernelAuditBusy as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"{name} refused: {exc}", file=sys.stderr)
        return 1
    return tmp, audit
