"""Harness for running bundles in a real Debian root filesystem against the real kernel audit facility.

What it provides (the fixtures in conftest.py wrap these):
- cached root filesystem tarballs built with mmdebstrap (`base_tarball`, `auditd_tarball`);
- `Rootfs`: a fresh extracted copy with helpers to run commands in it through `unshare --mount`
  plus `chroot`, the way the Job reaches the host;
- `KernelAudit`: the machine-wide lock and the teardown that puts kernel audit back as it was;
- `DevLog`: a UNIX datagram listener bound at the root's /dev/log (where audisp-syslog writes);
- bundle builders: `render_policy_bundle` (the real renderer) and `write_bundle` (hand-made, for
  faults the renderer would refuse to produce).

Kernel audit state is global to the machine: everything here that touches it must run under
`KernelAudit` (lock held start to teardown) and serially.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nodeaudit import kernellock
from nodeaudit.demo import realhost

REPO = Path(__file__).resolve().parents[2]
HOST_SCRIPTS = REPO / "operator" / "nodeaudit" / "host"
KERNEL_AUDIT_LOCK = kernellock.KERNEL_AUDIT_LOCK
SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("NODEAUDIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PROCMON_RULES = (
    "-a always,exit -F arch=b64 -S execve -k procmon",
    "-a always,exit -F arch=b32 -S execve -k procmon",
)
# How `auditctl -l` prints PROCMON_RULES.
PROCMON_LISTED = (
    "-a always,exit -F arch=b64 -S execve -F key=procmon",
    "-a always,exit -F arch=b32 -S execve -F key=procmon",
)


def cache_dir() -> Path:
    return realhost.cache_dir()


# ------------------------------------------------------------------------------------------------
# Root filesystem tarballs: built and cached by the product module `demo --real-host` uses, so the
# demo and the tests share one cache (`.cache/rootfs/`, NODEAUDIT_CACHE_DIR) and one build lock.


def _build_tarball(name: str, extra: list[str]) -> Path:
    return realhost.build_tarball(name, extra)


def base_tarball() -> Path:
    """Debian bookworm minbase without auditd: the fresh-node case (no AKS image ships auditd)."""
    return _build_tarball(f"debian-{SUITE}-minbase.tar.zst", [])


def auditd_tarball() -> Path:
    """The same root with auditd already installed by mmdebstrap's apt (--include=auditd).

    Built independently of apply.sh on purpose, so a bug in apply.sh cannot poison the cache."""
    return realhost.auditd_tarball()


# ------------------------------------------------------------------------------------------------
# One extracted root


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    result: dict[str, object] | None = None

    def __repr__(self) -> str:
        return f"rc={self.rc} ({self.seconds:.2f}s)\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}"


# Mount /proc inside a private mount namespace (nothing leaks into the caller's mounts, and it
# disappears with the last process in it), then chroot, as job-entry.sh's fallback does.
_ENTER = 'mount -t proc proc "$1/proc" && root=$1 && shift && exec chroot "$root" "$@"'


class Rootfs:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def extract(cls, tarball: Path, into: Path) -> Rootfs:
        into.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "--zstd", "-xpf", str(tarball), "-C", str(into)], check=True)
        # apt inside the root resolves the mirror with the machine's resolver.
        resolv = into / "etc" / "resolv.conf"
        resolv.unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", resolv)
        return cls(into)

    def __truediv__(self, rel: str) -> Path:
        return self.path / rel.lstrip("/")

    def run(self, *argv: str, env: Mapping[str, str] | None = None, timeout: float = 600) -> Result:
        """Run argv inside the root (unshare --mount + chroot)."""
        start = time.monotonic()
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "sh", str(self.path), *argv],
            capture_output=True, text=True, timeout=timeout, env=_env(env),
        )
        return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)

    def auditctl(self, *args: str) -> str:
        return self.run("auditctl", *args).stdout

    def processes(self) -> list[int]:
        """PIDs whose root directory is this rootfs (auditd, its plugins, anything leaked)."""
        return processes_rooted_in(self.path)

    def run_bundle(self, bundle: Path, *, remove: bool = False, termination_log: Path | None = None,
                   env: Mapping[str, str] | None = None) -> Result:
        """What the Job does: job-entry.sh copies the bundle to the host and runs apply.sh there.

        nsenter into PID 1 would leave the rootfs for the real machine, so the test forces
        job-entry.sh's chroot fallback; the mount namespace and chroot are real."""
        entry = bundle / "job-entry.sh"
        if not entry.exists():
            entry = HOST_SCRIPTS / "job-entry.sh"
        script = 'mount -t proc proc "$1/proc" && shift && exec sh "$@"'
        extra = {
            "NODEAUDIT_BUNDLE_SRC": str(bundle),
            "NODEAUDIT_HOST_MOUNT": str(self.path),
            "NODEAUDIT_NSENTER": "no",
            "NODEAUDIT_TERMINATION_LOG": str(termination_log or "/nonexistent/termination-log"),
            **(env or {}),
        }
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(self.path),
                str(entry), *(["--remove"] if remove else [])]
        start = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=_env(extra))
        res = Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
        lines = proc.stdout.strip().splitlines()
        if lines:
            with contextlib.suppress(ValueError):
                res.result = json.loads(lines[-1])
        return res


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
    }
    env.update(extra or {})
    return env


processes_rooted_in = realhost.processes_rooted_in
kill_pids = realhost.kill_pids


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------
# Kernel audit: lock, guard, restore


class KernelAuditUnavailable(Exception):
    """auditctl cannot reach the kernel audit facility here (or we are not root): skip."""


class KernelAuditBusy(Exception):
    """Someone else's auditd or rules are in the kernel: refuse to run (never silently pass)."""


parse_status = realhost.parse_status


@dataclass
class KernelAudit:
    """Holds the machine-wide kernel-audit lock and restores kernel audit state on close.

    `ctl` is a root with auditd installed, used for auditctl so the machine's own (if any) is
    never needed. `roots` are the directories whose processes this test may have started."""

    ctl: Rootfs
    lock_path: str = KERNEL_AUDIT_LOCK
    lock_timeout: float = 1800
    roots: list[Path] = field(default_factory=list)
    initial: dict[str, str] = field(default_factory=dict)
    _lock: object = None

    def auditctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["chroot", str(self.ctl.path), "auditctl", *args],
                              capture_output=True, text=True, timeout=30, env=_env(None))

    def status(self) -> dict[str, str]:
        return parse_status(self.auditctl("-s").stdout)

    def rules(self) -> list[str]:
        out = self.auditctl("-l").stdout.strip().splitlines()
        return [] if out == ["No rules"] else out

    def open(self) -> None:
        if os.geteuid() != 0:
            raise KernelAuditUnavailable("host tests need root (kernel audit control and chroot)")
        try:
            self._lock = kernellock.acquire(self.lock_path, timeout=self.lock_timeout, poll=0.5)
        except kernellock.LockBusy as error:
            raise KernelAuditBusy(str(error)) from None
        try:
            probe = self.auditctl("-s")
            if probe.returncode != 0 or "pid" not in probe.stdout:
                raise KernelAuditUnavailable(f"auditctl -s cannot reach the kernel audit facility: "
                                             f"{(probe.stderr or probe.stdout).strip()}")
            self.initial = parse_status(probe.stdout)
            if self.initial.get("pid", "0") != "0":
                raise KernelAuditBusy(f"another auditd is registered with the kernel (pid {self.initial['pid']})")
            if self.initial.get("enabled") == "2":
                raise KernelAuditBusy("kernel audit is immutable (enabled 2) until reboot")
            if self.rules():
                raise KernelAuditBusy(f"kernel already has audit rules loaded by someone else: {self.rules()[:3]}")
        except BaseException:
            self._lock.close()
            self._lock = None
            raise

    def close(self) -> list[str]:
        """Kill what we started, flush our rules, disable, restore limits. Returns problems found."""
        problems: list[str] = []
        try:
            status = self.status()
            pid = int(status.get("pid", "0") or 0)
            ours: list[int] = []
            for root in self.roots:
                ours.extend(processes_rooted_in(root))
            if pid and pid not in ours:
                # Registered after we checked pid 0 under the lock: only our tests can have done it.
                ours.append(pid)
            kill_pids(sorted(set(ours)))
            self.auditctl("-D")
            if self.rules():
                # The kernel resolves an `exe=` rule's path in the deleting process's root, so -D
                # from the control root stops at a rule whose path exists only in a test root.
                for root in self.roots:
                    if (root / "sbin" / "auditctl").exists() or (root / "usr" / "sbin" / "auditctl").exists():
                        subprocess.run(["chroot", str(root), "auditctl", "-D"], capture_output=True,
                                       text=True, timeout=30, env=_env(None))
            self.auditctl("-e", "0")
            for flag, key in (("-b", "backlog_limit"), ("--backlog_wait_time", "backlog_wait_time"),
                              ("-r", "rate_limit"), ("-f", "failure")):
                if key in self.initial:
                    self.auditctl(flag, self.initial[key])
            after = self.status()
            if after.get("pid") != "0":
                problems.append(f"auditd still registered after teardown: {after.get('pid')}")
            if self.rules():
                problems.append(f"rules still loaded after teardown: {self.rules()}")
            for root in self.roots:
                left = processes_rooted_in(root)
                if left:
                    problems.append(f"processes left in {root}: {[(p, comm(p)) for p in left]}")
                problems.extend(_unmount_under(root))
        finally:
            if self._lock is not None:
                self._lock.close()  # type: ignore[attr-defined]
                self._lock = None
        return problems


def _unmount_under(root: Path) -> list[str]:
    """Mounts made by tests live in private namespaces; anything in ours is a leak: unmount it."""
    prefix = str(root.resolve())
    leaked = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            leaked.append(point)
    for point in sorted(leaked, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    return [f"mount leaked into the test's namespace: {p}" for p in leaked]


# ------------------------------------------------------------------------------------------------
# Syslog listener at the root's /dev/log


class DevLog:
    """audisp-syslog writes to /dev/log with syslog(3): a datagram per record."""

    def __init__(self, root: Rootfs):
        self.path = root / "dev/log"
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.messages: list[str] = []

    def drain(self, seconds: float = 0.0) -> list[str]:
        deadline = time.monotonic() + seconds
        new = []
        while True:
            left = deadline - time.monotonic()
            self.sock.settimeout(max(left, 0.01))
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                if time.monotonic() >= deadline:
                    break
                continue
            new.append(data.decode("utf-8", "replace"))
        self.messages.extend(new)
        return new

    def wait_for(self, predicate: Callable[[list[str]], object], timeout: float = 10.0) -> object:
        deadline = time.monotonic() + timeout
        while True:
            found = predicate(self.messages)
            if found:
                return found
            if time.monotonic() > deadline:
                return None
            self.drain(0.1)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


_SERIAL = re.compile(r"msg=audit\(([0-9.]+:[0-9]+)\)")


def find_exec_record(messages: list[str], marker: str, key: str = "procmon") -> tuple[str, str] | None:
    """The EXECVE datagram carrying `marker` and the SYSCALL datagram of the same event with `key`.

    Every exec on the machine is audited and other programs log at authpriv too, so the match is
    on the marker and the event serial, never on "any <86> line"."""
    for msg in messages:
        if "type=EXECVE" in msg and marker in msg:
            serial = _SERIAL.search(msg)
            if not serial:
                continue
            for other in messages:
                if "type=SYSCALL" in other and f"msg=audit({serial.group(1)})" in other and f'key="{key}"' in other:
                    return msg, other
    return None


def exec_marker(root: Rootfs) -> str:
    marker = f"nodeaudit-marker-{uuid.uuid4().hex}"
    res = root.run("/bin/echo", marker)
    assert res.rc == 0, res
    return marker


# ------------------------------------------------------------------------------------------------
# Bundles


def _hash_files(files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{len(files[name])}\0".encode())
        digest.update(files[name])
    return "sha256:" + digest.hexdigest()


def plugin_config(version: int, facility: str = "LOG_AUTHPRIV", priority: str = "LOG_INFO") -> bytes:
    path, kind = ("/sbin/audisp-syslog", "always") if version == 3 else ("builtin_syslog", "builtin")
    return (
        "# managed by nodeaudit: audit records to syslog for the monitoring agent\n"
        f"active = yes\ndirection = out\npath = {path}\ntype = {kind}\n"
        f"args = {priority} {facility}\nformat = string\n"
    ).encode()


def write_bundle(directory: Path, policy: str, rules: list[str], expected: list[str], *,
                 syslog: bool = True, allow_immutable: bool = False, allow_panic: bool = False,
                 install_timeout: int = 300) -> Path:
    """A bundle made by hand per CONTRACTS.md, for rules the renderer would refuse to produce
    (the kernel-refusal fault) and for branch tests. Scripts come from the source tree."""
    rules_name = f"60-nodeaudit-{policy}.rules"
    files: dict[str, bytes] = {
        "apply.sh": (HOST_SCRIPTS / "apply.sh").read_bytes(),
        "job-entry.sh": (HOST_SCRIPTS / "job-entry.sh").read_bytes(),
        rules_name: ("## test bundle\n" + "".join(r + "\n" for r in rules)).encode(),
        "expected.rules": "".join(e + "\n" for e in expected).encode(),
        "syslog-v3.conf": plugin_config(3),
        "syslog-v2.conf": plugin_config(2),
    }
    env = {
        "NODEAUDIT_POLICY": policy,
        "NODEAUDIT_RULES_FILE": rules_name,
        "NODEAUDIT_SYSLOG": "yes" if syslog else "no",
        "NODEAUDIT_ALLOW_IMMUTABLE": "yes" if allow_immutable else "no",
        "NODEAUDIT_ALLOW_PANIC": "yes" if allow_panic else "no",
        "NODEAUDIT_INSTALL_TIMEOUT": str(install_timeout),
    }
    digest = _hash_files({**files, "bundle.env": "".join(f"{k}={v}\n" for k, v in env.items()).encode()})
    files["bundle.env"] = "".join(f"{k}={v}\n" for k, v in {"NODEAUDIT_BUNDLE": digest, **env}.items()).encode()
    files["bundle.json"] = json.dumps({
        "hash": digest, "policy": policy,
        "files": {n: "sha256:" + hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())},
    }).encode()
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def render_policy_bundle(directory: Path, policy: Mapping[str, object]) -> Path:
    """The real renderer: `nodeaudit.bundle.render_bundle` on a policy dict (as in YAML)."""
    from nodeaudit.bundle import render_bundle
    from nodeaudit.policy import NodeAuditPolicy

    bundle = render_bundle(NodeAuditPolicy.model_validate(dict(policy)))
    bundle.write(directory)
    return directory


def policy_doc(name: str, rules: list[str], **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "nodeaudit.io/v1alpha1",
        "kind": "NodeAuditPolicy",
        "metadata": {"name": name},
        "spec": {"rules": list(rules), **spec},
    }


def read_file_bytes(root: Rootfs, rel: str) -> bytes | None:
    path = root / rel
    return path.read_bytes() if path.exists() else None


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    end: list[float] = []
    yield lambda: (end[0] if end else time.monotonic()) - start
    end.append(time.monotonic())
