"""Harness for running bundles in a real Debian root filesystem against the real kernel audit facility.

What it provides (the fixtures in conftest.py wrap these):
- cached root filesystem tarballs built with mmdebstrap (`base_tarball`, `auditd_tarball`);
- `Rootfs`: a fresh extracted copy with helpers to run commands in it through `unshare --mount`
  plus `chroot`, the way the Job reaches the host;
- `KernelAudit`: the machine-wide lock and the teardown that puts kernel audit back as it was
  (`hostaudit.guard.KernelAuditGuard`, the product's own, plus what only tests need);
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
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nodeaudit.hostaudit import guard as kernel_guard
from nodeaudit.hostaudit import lock as kernellock
from nodeaudit.testing import realhost

HOST_SCRIPTS = realhost.HOST_SCRIPTS
SUITE = realhost.SUITE
# How `auditctl -l` prints tests.policies.PROCMON_RULES.
PROCMON_LISTED = (
    "-a always,exit -F arch=b64 -S execve -F key=procmon",
    "-a always,exit -F arch=b32 -S execve -F key=procmon",
)


def cache_dir() -> Path:
    return realhost.cache_dir()


# ------------------------------------------------------------------------------------------------
# Root filesystem tarballs: built and cached by the product module `demo --real-host` uses, so the
# demo and the tests share one cache (`.cache/rootfs/`, NODEAUDIT_CACHE_DIR) and one build lock.


def base_tarball() -> Path:
    """Debian bookworm minbase without auditd: the fresh-node case (no AKS image ships auditd)."""
    return realhost.build_tarball(f"debian-{SUITE}-minbase.tar.zst", [])


def auditd_tarball() -> Path:
    """The same root with auditd already installed by mmdebstrap's apt (--include=auditd).

    Built independently of apply.sh on purpose, so a bug in apply.sh cannot poison the cache."""
    return realhost.auditd_tarball()


def python_tarball() -> Path:
    """The auditd root plus python3, as AKS node images have it: the JSON dispatcher runs there."""
    return realhost.build_tarball(f"debian-{SUITE}-minbase-auditd-python3.tar.zst", ["--include=auditd,python3"])


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
_CHROOT = 'mount -t proc proc "$1/proc" && root=$1 && shift && exec chroot "$root" "$@"'


class Rootfs:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def extract(cls, tarball: Path, into: Path) -> Rootfs:
        return cls(realhost.extract_root(tarball, into))

    def __truediv__(self, rel: str) -> Path:
        return self.path / rel.lstrip("/")

    def run(self, *argv: str, env: Mapping[str, str] | None = None, timeout: float = 600) -> Result:
        """Run argv inside the root (unshare --mount + chroot)."""
        start = time.monotonic()
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", _CHROOT, "sh", str(self.path), *argv],
            capture_output=True, text=True, timeout=timeout, env=kernel_guard.root_env(env),
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

        nsenter into PID 1 would leave the rootfs for the real machine, so job-entry.sh's chroot
        fallback is forced (`realhost.run_job_entry`, as `demo --real-host` runs it)."""
        start = time.monotonic()
        rc, out, err = realhost.run_job_entry(self.path, bundle, remove=remove, termination_log=termination_log,
                                              env=env)
        res = Result(rc, out, err, time.monotonic() - start)
        lines = out.strip().splitlines()
        if lines:
            with contextlib.suppress(ValueError):
                res.result = json.loads(lines[-1])
        return res


processes_rooted_in = kernel_guard.processes_rooted_in
kill_pids = kernel_guard.kill_pids
comm = kernel_guard.comm


# ------------------------------------------------------------------------------------------------
# Kernel audit: lock, guard, restore


KernelAuditUnavailable = kernel_guard.KernelAuditUnavailable  # skip: not root, or no kernel audit here
KernelAuditBusy = kernel_guard.KernelAuditBusy  # refuse (never silently pass): someone else's auditd or rules
parse_status = kernel_guard.parse_status


class KernelAudit(kernel_guard.KernelAuditGuard):
    """`kernel_guard.KernelAuditGuard` with the control root a `Rootfs`, plus what only tests need.

    `roots` are the directories whose processes this test may have started (appended as roots are
    made). Teardown also deletes `exe=` rules from inside each root and unmounts leaked mounts."""

    def __init__(self, ctl: Rootfs, lock_path: str = kernellock.KERNEL_AUDIT_LOCK, lock_timeout: float = 1800):
        super().__init__(ctl.path, lock_path=lock_path, lock_timeout=lock_timeout)

    def flush_rules(self) -> None:
        super().flush_rules()
        if self.rules():
            # The kernel resolves an `exe=` rule's path in the deleting process's root, so -D
            # from the control root stops at a rule whose path exists only in a test root.
            for root in self.roots:
                if (root / "sbin" / "auditctl").exists() or (root / "usr" / "sbin" / "auditctl").exists():
                    subprocess.run(["chroot", str(root), "auditctl", "-D"], capture_output=True,
                                   text=True, timeout=30, env=kernel_guard.root_env())

    def close(self) -> list[str]:
        problems = super().close()
        for root in self.roots:
            problems.extend(_unmount_under(root))
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
        "lib.sh": (HOST_SCRIPTS / "lib.sh").read_bytes(),
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
    """The real renderer: `nodeaudit.core.bundle.render_bundle` on a policy dict (as in YAML)."""
    from nodeaudit.core.bundle import render_bundle
    from nodeaudit.core.policy import NodeAuditPolicy

    bundle = render_bundle(NodeAuditPolicy.model_validate(dict(policy)))
    bundle.write(directory)
    return directory
