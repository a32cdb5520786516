"""`nodeaudit demo --real-host`: run one simulated node's Job for real, on a Debian root filesystem.

Why: the simulated nodes show what the operator decides; this shows that what it ships works. One
node's Job is not faked: the bundle from its ConfigMap goes through ``job-entry.sh`` (chroot
fallback, as in the host tests) into a real Debian 12 root filesystem with the real ``auditd``,
against this machine's real kernel audit facility, and its termination message becomes that
node's record.

Kernel audit state belongs to the whole machine, so this module is careful in the way the host
tests are: it holds ``/run/lock/nodeaudit-kernel-audit.lock`` (exclusive flock) from start to
close, refuses to start when not root, when the kernel has no audit facility, when another audit
daemon is registered or rules are loaded, and on close (also after Ctrl-C) kills the processes it
started (by PID), flushes the rules (``auditctl -D``), disables audit (``auditctl -e 0``) and
restores the limits it found. It never loads ``-e 2``/``-f 2`` itself (apply.sh refuses them too).

The root filesystem is the host tests' cached tarball (``.cache/rootfs/``, ``NODEAUDIT_CACHE_DIR``
overrides), built with ``mmdebstrap`` on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from nodeaudit import kernellock

REPO = Path(__file__).resolve().parents[3]
KERNEL_AUDIT_LOCK = kernellock.KERNEL_AUDIT_LOCK
SUITE = "bookworm"
AUDITD_TARBALL = f"debian-{SUITE}-minbase-auditd.tar.zst"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Mount /proc inside a private mount namespace (it vanishes with the last process in it), then run
# job-entry.sh, which chroots into the root: what the Job does when nsenter is not possible.
_ENTER = 'mount -t proc proc "$1/proc" && shift && exec sh "$@"'

Progress = Callable[[str], None]


class RealHostError(Exception):
    """The real host cannot be used here; the message says why and what to do."""


def cache_dir() -> Path:
    """Where root filesystem tarballs are cached (shared with the host tests)."""
    base = os.environ.get("NODEAUDIT_CACHE_DIR")
    if base:
        path = Path(base)
    elif (REPO / "pyproject.toml").exists():
        path = REPO / ".cache"
    else:
        path = Path.home() / ".cache" / "nodeaudit"
    return path / "rootfs"


def _sources(mirror: str) -> list[str]:
    return [f"deb {mirror} {SUITE} main", f"deb {mirror} {SUITE}-updates main",
            f"deb {mirror}-security {SUITE}-security main"]


def build_tarball(name: str, extra: list[str], progress: Progress | None = None) -> Path:
    """The cached Debian root ``name``, built with ``mmdebstrap --variant=minbase`` when missing.

    ``progress`` None: quiet (the tests); else mmdebstrap's own output is shown line by line."""
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    if target.exists():
        return target
    # Parallel sessions must not build the same tarball twice at once.
    with open(out_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        if shutil.which("mmdebstrap") is None:
            raise RealHostError(f"{target} is not cached and mmdebstrap is not installed "
                                "(apt-get install mmdebstrap zstd)")
        mirror = os.environ.get("NODEAUDIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
        partial = out_dir / f".{name}.{os.getpid()}.partial.tar.zst"
        cmd = ["mmdebstrap", "--variant=minbase", *extra, SUITE, str(partial), *_sources(mirror)]
        try:
            if progress is None:
                proc = subprocess.run(["mmdebstrap", "--quiet", *cmd[1:]], capture_output=True, text=True,
                                      timeout=900)
                rc, tail = proc.returncode, proc.stderr[-2000:]
            else:
                progress(f"building {target} with mmdebstrap (once; about 20 s)")
                rc, tail = _stream(cmd, progress)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if rc != 0:
            partial.unlink(missing_ok=True)
            raise RealHostError(f"mmdebstrap failed ({rc}): {tail}")
        os.replace(partial, target)
    return target


def _stream(cmd: list[str], progress: Progress) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            progress("    " + line.rstrip())
        return proc.wait(900), "\n".join(lines[-20:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def auditd_tarball(progress: Progress | None = None) -> Path:
    """Debian bookworm minbase with auditd installed by mmdebstrap's apt (--include=auditd)."""
    return build_tarball(AUDITD_TARBALL, ["--include=auditd"], progress)


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


def parse_status(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key:
            out[key] = value.strip()
    return out


class RealHost:
    """One extracted Debian root, the kernel-audit lock, and the restore on close.

    ``open()`` takes the lock and checks the kernel; ``run_job()`` runs a bundle's job-entry.sh
    in the root and returns (exit code, termination message); ``close()`` restores."""

    def __init__(self, progress: Progress = print, lock_path: str = KERNEL_AUDIT_LOCK,
                 lock_timeout: float = 300.0) -> None:
        self.progress = progress
        self.lock_path = lock_path
        self.lock_timeout = lock_timeout
        self.workdir: Path | None = None
        self.root: Path | None = None
        self.initial: dict[str, str] = {}
        self.runs = 0
        self._lock: IO[str] | None = None
        self._procs: dict[int, subprocess.Popen[str]] = {}
        self._mutex = threading.Lock()
        self._closed = False
        self._armed = False  # the kernel was checked clean under the lock: from now on, we restore it

    # ---- set-up ---------------------------------------------------------------------------

    def open(self) -> RealHost:
        if os.geteuid() != 0:
            raise RealHostError("needs root (kernel audit control, chroot, mount); run it with sudo")
        for tool in ("unshare", "chroot", "tar", "zstd"):
            if shutil.which(tool) is None:
                raise RealHostError(f"{tool} is not installed (apt-get install util-linux coreutils tar zstd)")
        try:
            self._take_lock()
            tarball = auditd_tarball(self.progress)
            self.workdir = Path(tempfile.mkdtemp(prefix="nodeaudit-demo-host-"))
            self.root = self.workdir / "root"
            self.progress(f"  real host: extracting {tarball.name} into {self.root}")
            self.root.mkdir()
            subprocess.run(["tar", "--zstd", "-xpf", str(tarball), "-C", str(self.root)], check=True)
            resolv = self.root / "etc" / "resolv.conf"
            resolv.unlink(missing_ok=True)
            shutil.copyfile("/etc/resolv.conf", resolv)
            self._check_kernel()
            self._armed = True
        except BaseException:
            self._release()
            raise
        return self

    def _take_lock(self) -> None:
        try:
            self._lock = kernellock.acquire(
                self.lock_path, timeout=self.lock_timeout, poll=0.5,
                on_wait=lambda: self.progress(f"  real host: waiting for {self.lock_path} (another kernel-audit user)"))
        except kernellock.LockBusy as error:
            raise RealHostError(f"{error}; try again later") from None

    def auditctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The root's auditctl (the machine needs none of its own)."""
        assert self.root is not None
        return subprocess.run(["chroot", str(self.root), "auditctl", *args], capture_output=True, text=True,
                              timeout=30, env={"PATH": PATH, "LANG": "C.UTF-8"})

    def rules(self) -> list[str]:
        out = self.auditctl("-l").stdout.strip().splitlines()
        return [] if out == ["No rules"] else out

    def _check_kernel(self) -> None:
        probe = self.auditctl("-s")
        if probe.returncode != 0 or "pid" not in probe.stdout:
            raise RealHostError("this kernel's audit facility cannot be reached (auditctl -s: "
                                f"{(probe.stderr or probe.stdout).strip() or probe.returncode}); "
                                "a container without CAP_AUDIT_CONTROL or a kernel without audit cannot run it")
        self.initial = parse_status(probe.stdout)
        if self.initial.get("pid", "0") != "0":
            raise RealHostError(f"another audit daemon is registered with the kernel (pid {self.initial['pid']}); "
                                "refusing to touch its rules")
        if self.initial.get("enabled") == "2":
            raise RealHostError("kernel audit is immutable (enabled 2) until reboot")
        loaded = self.rules()
        if loaded:
            raise RealHostError(f"the kernel already has audit rules loaded by someone else: {loaded[:3]}")

    # ---- one Job ----------------------------------------------------------------------------

    def run_job(self, files: Mapping[str, str], remove: bool = False, timeout: float = 900) -> tuple[int, str]:
        """What the Job's container does with the bundle ConfigMap: ``sh job-entry.sh`` with the
        bundle at NODEAUDIT_BUNDLE_SRC and this root as the host mount (chroot fallback).

        Returns the exit code and the termination message as the kubelet makes it
        (``terminationMessagePolicy: FallbackToLogsOnError``)."""
        if self.root is None or self.workdir is None or self._closed:
            raise RealHostError("the real host is not open")
        with self._mutex:
            self.runs += 1
            run_dir = self.workdir / f"job{self.runs}"
        bundle = run_dir / "bundle"
        bundle.mkdir(parents=True)
        for name, text in files.items():
            (bundle / name).write_text(text)
        termlog = run_dir / "termination-log"
        termlog.write_text("")
        env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "NODEAUDIT_BUNDLE_SRC": str(bundle),
               "NODEAUDIT_HOST_MOUNT": str(self.root), "NODEAUDIT_NSENTER": "no",
               "NODEAUDIT_TERMINATION_LOG": str(termlog)}
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "sh", str(self.root),
                str(bundle / "job-entry.sh"), *(["--remove"] if remove else [])]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)  # a terminal's Ctrl-C reaches the demo, which restores
        with self._mutex:
            self._procs[proc.pid] = proc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_pids([proc.pid])
            out, err = proc.communicate()
        finally:
            with self._mutex:
                self._procs.pop(proc.pid, None)
        (run_dir / "stdout").write_text(out)
        (run_dir / "stderr").write_text(err)
        message = termlog.read_text()
        if not message.strip() and proc.returncode != 0:
            message = "\n".join((out + err).strip().splitlines()[-80:])[-4096:]
        return proc.returncode, message[:4096]

    @staticmethod
    def result(message: str) -> dict[str, object] | None:
        for line in reversed(message.strip().splitlines()):
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    return parsed
        return None

    # ---- teardown ---------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Kill what we started, flush the rules, disable audit, restore limits, release the lock.

        Safe to call twice and after a failed open(); returns the problems found (empty: clean)."""
        if self._closed:
            return []
        self._closed = True
        return self._release()

    def _release(self) -> list[str]:
        problems: list[str] = []
        try:
            with self._mutex:
                running = list(self._procs)
            # Only after the kernel was found clean under our lock: a refusal (someone else's auditd
            # or rules) must leave their state alone.
            if self._armed and self.root is not None and self.root.exists() and self._lock is not None:
                ours = running + processes_rooted_in(self.root)
                status = parse_status(self.auditctl("-s").stdout)
                pid = int(status.get("pid", "0") or 0)
                if pid and pid not in ours:
                    ours.append(pid)  # registered after we saw pid 0 under the lock: ours
                kill_pids(sorted(set(ours)))
                self.auditctl("-D")
                self.auditctl("-e", "0")
                for flag, key in (("-b", "backlog_limit"), ("--backlog_wait_time", "backlog_wait_time"),
                                  ("-r", "rate_limit"), ("-f", "failure")):
                    if key in self.initial:
                        self.auditctl(flag, self.initial[key])
                after = parse_status(self.auditctl("-s").stdout)
                if after.get("pid", "0") != "0":
                    problems.append(f"an audit daemon is still registered: pid {after.get('pid')}")
                if self.rules():
                    problems.append(f"rules still loaded: {self.rules()[:3]}")
                left = processes_rooted_in(self.root)
                if left:
                    problems.append(f"processes left in {self.root}: {left}")
            elif running:
                kill_pids(running)
            if self.workdir is not None and not (self.root and processes_rooted_in(self.root)):
                shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            self._armed = False
            if self._lock is not None:
                self._lock.close()
                self._lock = None
        return problems
