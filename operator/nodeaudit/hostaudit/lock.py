"""The machine-wide kernel-audit lock.

A machine has one kernel audit state (rules, enabled flag, the registered daemon). Everything here
that changes it (`nodeaudit estimate`, `nodeaudit demo --real-host`, the host tests) holds this
one lock from start to teardown, so that two of them never interleave.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

KERNEL_AUDIT_LOCK = "/run/lock/nodeaudit-kernel-audit.lock"


class LockBusy(Exception):
    """Another process held the lock for longer than the caller wanted to wait."""


def acquire(path: str = KERNEL_AUDIT_LOCK, *, timeout: float, poll: float = 0.2,
            on_wait: Callable[[], None] | None = None) -> TextIO:
    """Take the lock (exclusive flock); returns the open file, which holds it until closed.

    `on_wait` is called once, when the lock is found busy, so a caller can say why it is waiting."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")  # noqa: SIM115 - the open file is the lock; the caller closes it
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise LockBusy(f"{path} is held by another kernel-audit user for more than {timeout:.0f} s") from None
            if on_wait is not None and not told:
                on_wait()
                told = True
            time.sleep(poll)
