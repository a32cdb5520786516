"""The one guard around this machine's kernel audit: lock, checks before, restore after.

Kernel audit state (rules, enabled flag, limits, the registered daemon) belongs to the whole
machine. Everything nodeaudit runs that changes it — ``nodeaudit estimate``, ``nodeaudit demo
--real-host``, the host tests and benchmarks — goes through ``KernelAuditGuard``: it holds
``/run/lock/nodeaudit-kernel-audit.lock`` (exclusive flock) from its checks to close, refuses to
start when not root, when the kernel has no audit facility, when another audit daemon is
registered, when audit is immutable (``-e 2``), and (unless told to keep them) when rules are
loaded. On close (also after Ctrl-C) it kills the processes started in its roots (by PID), removes
the rules (all of them, or with ``keep_rules`` only those added through it), and puts back the
``enabled`` flag and the limits it found, then checks that the kernel is as it was.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from nodeaudit.hostaudit import lock as kernellock

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The limits `auditctl -s` reports and the flag that sets each (restored on close).
LIMITS = (("-b", "backlog_limit"), ("--backlog_wait_time", "backlog_wait_time"), ("-r", "rate_limit"),
          ("-f", "failure"))
ROOT_HINT = "needs root (kernel audit control, chroot, mount); run it with sudo"
DAEMON_HINT = "refusing to touch its rules"


class KernelAuditError(Exception):
    """Kernel audit cannot be used here; the message says why and what to do."""


class KernelAuditUnavailable(KernelAuditError):
    """Not root, or auditctl cannot reach the kernel audit facility here."""


class KernelAuditBusy(KernelAuditError):
    """The lock stayed busy, or someone else's audit daemon, rules or -e 2 are in the kernel."""


def root_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for commands run in a root (nothing of the caller's leaks in)."""
    return {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", **(extra or {})}


def parse_status(text: str) -> dict[str, str]:
    """``auditctl -s`` output → {key: value}."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key:
            out[key] = value.strip()
    return out


def comm(pid: int) -> str:
    """The process's command name, or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _rooted_under(pid: int, roots: Sequence[Path]) -> bool:
    try:
        root = os.readlink(f"/proc/{pid}/root")
    except OSError:
        return False
    for path in roots:
        prefix = str(path.resolve())
        if root == prefix or root.startswith(prefix + "/"):
            return True
    return False


def processes_rooted_in(path: Path) -> list[int]:
    """PIDs whose root directory is ``path`` or below (auditd, its plugins, anything leaked)."""
    prefix = str(path.resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            root = os.readlink(f"/proc/{entry}/root")
        except OSError:
            continue
        if root == prefix or root.startswith(prefix + "/"):
            found.append(int(entry))
    return found


def kill_pids(pids: list[int], timeout: float = 5.0) -> None:
    """TERM, wait, then KILL: by PID, never by name."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if os.path.exists(f"/proc/{p}")]
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def delete_args(rule_text: str) -> list[str]:
    """auditctl arguments that delete the rule `rule_text` added (-a -> -d, -w -> -W)."""
    args = shlex.split(rule_text)
    if args and args[0] in ("-a", "-A"):
        return ["-d", *args[1:]]
    if args and args[0] == "-w":
        return ["-W", *args[1:]]
    raise ValueError(f"not a rule that can be deleted: {rule_text}")


class KernelAuditGuard:
    """The machine-wide kernel-audit lock, the checks before touching kernel audit, and the restore.

    ``ctl``: a root with auditd installed whose auditctl is used (the machine then needs none of
    its own); None: the machine's ``auditctl``. ``roots`` are the directories whose processes are
    ours: on close they are killed, and an audit daemon registered from one of them is ours too.
    ``keep_rules``: rules loaded before are someone else's and stay (only rules added with
    ``add_rule`` are deleted); without it, loaded rules are a refusal and close flushes all rules.
    ``lock_path`` None: the caller holds the lock already. ``open()`` takes the lock and refuses
    someone else's state; ``close()`` restores and returns the problems found (empty: clean)."""

    def __init__(self, ctl: Path | None = None, *, roots: Sequence[Path] = (),
                 lock_path: str | None = kernellock.KERNEL_AUDIT_LOCK, lock_timeout: float = 300.0,
                 on_wait: Callable[[], None] | None = None, keep_rules: bool = False,
                 auditctl: str = "auditctl", root_hint: str = ROOT_HINT, daemon_hint: str = DAEMON_HINT) -> None:
        self.ctl = ctl
        self.roots: list[Path] = list(roots)
        self.lock_path = lock_path
        self.lock_timeout = lock_timeout
        self.on_wait = on_wait
        self.keep_rules = keep_rules
        self.root_hint = root_hint
        self.daemon_hint = daemon_hint
        self._command = ["chroot", str(ctl), auditctl] if ctl is not None else [auditctl]
        self.initial: dict[str, str] = {}
        self.initial_rules: list[str] = []
        self.added: list[str] = []
        self._lock: IO[str] | None = None
        self._armed = False  # the kernel was checked clean under the lock: from now on, we restore it

    def auditctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The control root's (or the machine's) auditctl."""
        return subprocess.run([*self._command, *args], capture_output=True, text=True, timeout=30,
                              env=root_env() if self.ctl is not None else None)

    def status(self) -> dict[str, str]:
        return parse_status(self.auditctl("-s").stdout)

    def rules(self) -> list[str]:
        out = self.auditctl("-l").stdout.strip().splitlines()
        return [] if out == ["No rules"] else out

    def open(self) -> None:
        if os.geteuid() != 0:
            raise KernelAuditUnavailable(self.root_hint)
        if self.lock_path is not None:
            try:
                self._lock = kernellock.acquire(self.lock_path, timeout=self.lock_timeout, poll=0.5,
                                                on_wait=self.on_wait)
            except kernellock.LockBusy as error:
                raise KernelAuditBusy(f"{error}; try again later") from None
        try:
            probe = self.auditctl("-s")
            if probe.returncode != 0 or "pid" not in probe.stdout:
                raise KernelAuditUnavailable(
                    "this kernel's audit facility cannot be reached (auditctl -s: "
                    f"{(probe.stderr or probe.stdout).strip() or probe.returncode}); "
                    "a container without CAP_AUDIT_CONTROL or a kernel without audit cannot run it")
            self.initial = parse_status(probe.stdout)
            pid = self.initial.get("pid", "0")
            if pid != "0":
                name = comm(int(pid)) if pid.isdigit() else ""
                raise KernelAuditBusy(f"another audit daemon is registered with the kernel (pid {pid}"
                                      f"{', ' + name if name else ''}); {self.daemon_hint}")
            if self.initial.get("enabled") == "2":
                raise KernelAuditBusy("kernel audit is immutable (enabled 2, -e 2) until reboot: "
                                      "rules cannot be changed")
            self.initial_rules = self.rules()
            if self.initial_rules and not self.keep_rules:
                raise KernelAuditBusy(
                    f"the kernel already has audit rules loaded by someone else: {self.initial_rules[:3]}")
        except BaseException:
            self._release_lock()
            raise
        self._armed = True

    def add_rule(self, text: str) -> subprocess.CompletedProcess[str]:
        """Load one rule (auditctl syntax); with ``keep_rules`` it is deleted again on close."""
        res = self.auditctl(*shlex.split(text))
        if res.returncode == 0:
            self.added.append(text)
        return res

    def flush_rules(self) -> None:
        """``auditctl -D`` (a subclass may add more ways to get rid of stubborn rules)."""
        self.auditctl("-D")

    def close(self) -> list[str]:
        """Kill what was started in our roots, remove the rules, put back ``enabled`` and the
        limits, release the lock. Safe to call twice and after a failed open(). Returns the
        problems found.

        Nothing is restored unless open() found the kernel clean under the lock: a refusal
        (someone else's auditd or rules) leaves their state alone."""
        problems: list[str] = []
        try:
            if self._armed:
                problems = self._restore()
        finally:
            self._armed = False
            self._release_lock()
        return problems

    def _restore(self) -> list[str]:
        problems: list[str] = []
        ours = [pid for root in self.roots for pid in processes_rooted_in(root)]
        probe = self.auditctl("-s")
        if probe.returncode != 0:
            problems.append(f"auditctl -s failed in teardown: {(probe.stderr or probe.stdout).strip()}")
        pid = int(parse_status(probe.stdout).get("pid", "0") or 0)
        foreign = 0
        if pid and pid not in ours:
            if _rooted_under(pid, self.roots):
                ours.append(pid)  # registered after we saw pid 0 under the lock, from our root
            else:
                # Not started in one of our roots: someone ignored the lock. Never kill it; say so.
                # (Our rules are removed all the same: the kernel was as found when we took over.)
                foreign = pid
                problems.append(f"an audit daemon outside our roots registered while we held the lock: pid {pid}"
                                f" ({comm(pid) or 'gone'}); not killed")
        kill_pids(sorted(set(ours)))
        self.auditctl("-e", self.initial.get("enabled", "0"))
        if self.keep_rules:
            for text in reversed(self.added):
                res = self.auditctl(*delete_args(text))
                if res.returncode != 0:
                    problems.append(f"could not delete `{text}`: {(res.stderr or res.stdout).strip()}")
        else:
            self.flush_rules()
        self.added.clear()
        for flag, key in LIMITS:
            if key in self.initial:
                self.auditctl(flag, self.initial[key])
        after = self.status()
        if after.get("pid") not in ("0", str(foreign)):
            problems.append(f"an audit daemon is still registered after teardown: pid {after.get('pid')}")
        for key in ("enabled", *(key for _, key in LIMITS)):
            if key in self.initial and after.get(key) != self.initial[key]:
                problems.append(f"kernel audit {key} is {after.get(key)}, was {self.initial[key]}")
        left_rules = self.rules()
        if left_rules != self.initial_rules:
            problems.append(f"the kernel's rules differ from what they were before: {left_rules[:3]}")
        for root in self.roots:
            left = processes_rooted_in(root)
            if left:
                problems.append(f"processes left in {root}: {[(p, comm(p)) for p in left]}")
        return problems

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
