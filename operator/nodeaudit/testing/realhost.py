"""`nodeaudit demo --real-host`: run one simulated node's Job for real, on a Debian root filesystem.

Why: the simulated nodes show what the operator decides; this shows that what it ships works. One
node's Job is not faked: the bundle from its ConfigMap goes through ``job-entry.sh`` (chroot
fallback, as in the host tests) into a real Debian 12 root filesystem with the real ``auditd``,
against this machine's real kernel audit facility, and its termination message becomes that
node's record.

Kernel audit state belongs to the whole machine: ``hostaudit.guard.KernelAuditGuard`` (shared
with ``nodeaudit estimate`` and the host tests) holds the lock, refuses someone else's state and
restores the kernel on close, also after Ctrl-C. Nothing here loads ``-e 2``/``-f 2`` (apply.sh
refuses them too).

The root filesystem is the host tests' cached tarball (``.cache/rootfs/``, ``NODEAUDIT_CACHE_DIR``
overrides), built with ``mmdebstrap`` on first use, before the kernel-audit lock is taken.
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
from collections.abc import Callable, Mapping
from pathlib import Path

from nodeaudit.hostaudit import lock as kernellock
from nodeaudit.hostaudit.guard import (
    KernelAuditError,
    KernelAuditGuard,
    KernelAuditUnavailable,
    processes_rooted_in,
    root_env,
)

HOST_SCRIPTS = Path(__file__).resolve().parents[1] / "host"
SUITE = "bookworm"
AUDITD_TARBALL = f"debian-{SUITE}-minbase-auditd.tar.zst"
# Mount /proc inside a private mount namespace (it vanishes with the last process in it), then run
# job-entry.sh, which chroots into the root: what the Job does when nsenter is not possible.
_ENTER = 'mount -t proc proc "$1/proc" && shift && exec sh "$@"'

Progress = Callable[[str], None]


class RealHostError(KernelAuditError):
    """The real host cannot be used here; the message says why and what to do."""


def cache_dir() -> Path:
    """Where root filesystem tarballs are cached (shared with the host tests)."""
    base = os.environ.get("NODEAUDIT_CACHE_DIR")
    if base:
        path = Path(base)
    elif (Path.cwd() / "operator" / "nodeaudit").is_dir():
        path = Path.cwd() / ".cache"  # run from a checkout (make test, make demo): .cache/ there
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nodeaudit"
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


# ------------------------------------------------------------------------------------------------
# One root: extract it, run a bundle's job-entry.sh in it


def extract_root(tarball: Path, into: Path) -> Path:
    """Extract a root filesystem tarball into ``into`` (created) with the machine's resolv.conf,
    so that apt inside the root resolves the mirror."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "--zstd", "-xpf", str(tarball), "-C", str(into)], check=True)
    resolv = into / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    return into


def run_job_entry(root: Path, bundle: Path, *, remove: bool = False, termination_log: Path | None = None,
                  env: Mapping[str, str] | None = None, timeout: float = 900,
                  started: Callable[[subprocess.Popen[str]], None] | None = None) -> tuple[int, str, str]:
    """What the Job's container does with the bundle: ``sh job-entry.sh [--remove]`` with the bundle
    at NODEAUDIT_BUNDLE_SRC and ``root`` as the host mount, in a private mount namespace.

    nsenter into PID 1 would leave the root for the real machine, so job-entry.sh's chroot
    fallback is forced; the mount namespace and chroot are real. ``env`` adds to (or overrides)
    the job's environment; ``started`` sees the process (a new session) as soon as it runs. On
    timeout the whole session is killed. Returns (exit code, stdout, stderr)."""
    entry = bundle / "job-entry.sh"
    if not entry.exists():
        entry = HOST_SCRIPTS / "job-entry.sh"
    job_env = root_env({
        "NODEAUDIT_BUNDLE_SRC": str(bundle),
        "NODEAUDIT_HOST_MOUNT": str(root),
        "NODEAUDIT_NSENTER": "no",
        "NODEAUDIT_TERMINATION_LOG": str(termination_log or "/nonexistent/termination-log"),
        **(env or {}),
    })
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "sh", str(root),
            str(entry), *(["--remove"] if remove else [])]
    # A new session: a terminal's Ctrl-C reaches only the caller (which restores), and the whole
    # job (unshare, sh, chroot, apply.sh, apt) can be killed as one process group.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=job_env,
                            start_new_session=True)
    if started is not None:
        started(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        out, err = proc.communicate()
    return proc.returncode, out, err


def kill_session(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group of ``proc`` (started with start_new_session) while it is unreaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class RealHost:
    """One extracted Debian root, the kernel-audit guard, and the restore on close.

    ``open()`` builds (once) and extracts the root, then takes the lock and checks the kernel;
    ``run_job()`` runs a bundle's job-entry.sh in the root and returns (exit code, termination
    message); ``close()`` restores."""

    def __init__(self, progress: Progress = print, lock_path: str = kernellock.KERNEL_AUDIT_LOCK,
                 lock_timeout: float = 300.0) -> None:
        self.progress = progress
        self.lock_path = lock_path
        self.lock_timeout = lock_timeout
        self.workdir: Path | None = None
        self.root: Path | None = None
        self.guard: KernelAuditGuard | None = None
        self.runs = 0
        self._procs: dict[int, subprocess.Popen[str]] = {}
        self._mutex = threading.Lock()
        self._closed = False

    @property
    def initial(self) -> dict[str, str]:
        return self.guard.initial if self.guard is not None else {}

    # ---- set-up ---------------------------------------------------------------------------

    def open(self) -> RealHost:
        if os.geteuid() != 0:
            raise KernelAuditUnavailable("needs root (kernel audit control, chroot, mount); run it with sudo")
        for tool in ("unshare", "chroot", "tar", "zstd"):
            if shutil.which(tool) is None:
                raise RealHostError(f"{tool} is not installed (apt-get install util-linux coreutils tar zstd)")
        try:
            # The build (mmdebstrap, up to 900 s) and the extraction do not touch kernel audit:
            # done before the lock, so other kernel-audit users are not kept waiting.
            tarball = auditd_tarball(self.progress)
            self.workdir = Path(tempfile.mkdtemp(prefix="nodeaudit-demo-host-"))
            self.root = self.workdir / "root"
            self.progress(f"  real host: extracting {tarball.name} into {self.root}")
            extract_root(tarball, self.root)
            self.guard = KernelAuditGuard(
                self.root, roots=[self.root], lock_path=self.lock_path, lock_timeout=self.lock_timeout,
                on_wait=lambda: self.progress(f"  real host: waiting for {self.lock_path} (another kernel-audit user)"))
            self.guard.open()
        except BaseException:
            self._release()
            raise
        return self

    def auditctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The root's auditctl (the machine needs none of its own)."""
        if self.guard is None:
            raise RealHostError("the real host is not open")
        return self.guard.auditctl(*args)

    def rules(self) -> list[str]:
        if self.guard is None:
            raise RealHostError("the real host is not open")
        return self.guard.rules()

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
        procs: list[subprocess.Popen[str]] = []

        def started(proc: subprocess.Popen[str]) -> None:
            procs.append(proc)
            with self._mutex:
                self._procs[proc.pid] = proc

        try:
            rc, out, err = run_job_entry(self.root, bundle, remove=remove, termination_log=termlog,
                                         timeout=timeout, started=started)
        finally:
            with self._mutex:
                for proc in procs:
                    self._procs.pop(proc.pid, None)
        (run_dir / "stdout").write_text(out)
        (run_dir / "stderr").write_text(err)
        message = termlog.read_text()
        if not message.strip() and rc != 0:
            message = "\n".join((out + err).strip().splitlines()[-80:])[-4096:]
        return rc, message[:4096]

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
        """Kill what we started, flush the rules, restore kernel audit, release the lock.

        Safe to call twice and after a failed open(); returns the problems found (empty: clean)."""
        if self._closed:
            return []
        self._closed = True
        return self._release()

    def _release(self) -> list[str]:
        problems: list[str] = []
        try:
            with self._mutex:
                running = list(self._procs.values())
            for proc in running:  # the Jobs still running: their whole sessions
                kill_session(proc)
            if self.guard is not None:
                problems = self.guard.close()
        finally:
            if self.workdir is not None and not (self.root and processes_rooted_in(self.root)):
                shutil.rmtree(self.workdir, ignore_errors=True)
        return problems
