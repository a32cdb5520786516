"""`nodeaudit demo --real-host` as a user runs it: one node's Job really runs, the rest is simulated.

Why a subprocess: the demo takes the kernel-audit lock itself and must restore kernel audit on its
own, also when it is interrupted; this test therefore holds no lock while the demo runs and checks
the kernel afterwards, under the lock, with the harness's own auditctl.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeaudit.hostaudit import lock as kernellock
from tests import REPO
from tests.host import hostlib

NODEAUDIT = str(Path(sys.executable).parent / "nodeaudit")
REAL_NODE = "aks-user1-20000002-vmss000000"


def _sigint_as_in_a_terminal() -> None:
    # A background job (CI, nohup, `cmd &`) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: the test's Ctrl-C must reach the demo as it does in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _demo(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([NODEAUDIT, "demo", "--real-host", "--nodes-per-pool", "2", "--metrics-port", "-1",
                             *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_sigint_as_in_a_terminal)


def _skip_if_unavailable(rc: int, out: str) -> None:
    if rc == 2 and ("cannot be reached" in out or "needs root" in out):
        pytest.skip(f"demo --real-host refused here: {out.strip().splitlines()[-1]}")


def _kernel_clean(ctl: hostlib.Rootfs) -> dict[str, str]:
    """Kernel audit as the demo must leave it, read under the lock."""
    with open(kernellock.KERNEL_AUDIT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = hostlib.parse_status(ctl.auditctl("-s"))
        rules = ctl.auditctl("-l").strip()
    assert status.get("pid") == "0", status
    assert status.get("enabled") == "0", status
    assert rules == "No rules", rules
    return status


def _rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("aks", "NODE"))}


def test_demo_real_host_records_the_real_node(ctl_root: hostlib.Rootfs) -> None:
    proc = _demo()
    out, _ = proc.communicate(timeout=600)
    _skip_if_unavailable(proc.returncode, out)
    assert proc.returncode == 0, out
    rows = _rows(out)
    header = rows["NODE"]
    real = dict(zip(header, rows[REAL_NODE], strict=False))
    assert (real["RESULT"], real["DISTRO"], real["AUDIT"]) == ("ok", "debian-12", "3.0.9"), out
    # The other selected nodes are simulated (the simulator's fixed Ubuntu answer).
    simulated = [dict(zip(header, r, strict=False)) for n, r in rows.items()
                 if n not in ("NODE", REAL_NODE) and "user" in n]
    assert len(simulated) == 3 and {r["DISTRO"] for r in simulated} == {"ubuntu-22.04"}, out
    # The real node's record is the real apply.sh's termination message, stored by the operator.
    line = next(x for x in out.splitlines() if x.strip().startswith(f"real host: {REAL_NODE} record:"))
    record = json.loads(line.split("record: ", 1)[1])
    assert record["result"] == "ok" and record["distro"] == "debian-12" and record["auditVersion"] == "3.0.9"
    assert record["rulesLoaded"] >= 2 and record["bundle"].startswith("sha256:")
    assert "kernel audit restored" in out
    root = re.search(r"runs job-entry\.sh in (\S+) ", out)
    assert root is not None, out
    assert not hostlib.processes_rooted_in(Path(root.group(1)))
    assert not Path(root.group(1)).exists()
    _kernel_clean(ctl_root)


def test_demo_real_host_interrupted_restores_kernel_audit(ctl_root: hostlib.Rootfs) -> None:
    proc = _demo("--keep-running")
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "still serving" in line:
            break
    out = "".join(lines)
    if proc.poll() is not None:
        rest, _ = proc.communicate()
        _skip_if_unavailable(proc.returncode, out + rest)
        pytest.fail(out + rest)
    assert "still serving" in out, out
    # auditd started by the real Job is running now, with the policy's rules in the kernel.
    root = Path(re.search(r"runs job-entry\.sh in (\S+) ", out).group(1))
    assert any(hostlib.comm(p) == "auditd" for p in hostlib.processes_rooted_in(root)), out
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        rest, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # Never leave it holding the kernel-audit lock: SIGTERM restores kernel audit like Ctrl-C.
        proc.terminate()
        proc.communicate(timeout=60)
        raise
    assert proc.returncode == 130, out + rest
    assert "kernel audit restored" in rest, rest
    assert not hostlib.processes_rooted_in(root)
    _kernel_clean(ctl_root)
