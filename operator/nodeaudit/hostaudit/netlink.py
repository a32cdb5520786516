"""The audit netlink socket: read and set kernel audit status, and receive records as auditd does.

Edge code for `nodeaudit estimate`. Kernel audit state is global to the machine, so
`KernelAuditSession` loads a bundle's rules (with the machine's `auditctl`) under the
`KernelAuditGuard` (the lock, no other audit daemon, and the restore: enabled flag, limits, and
the rule list, only the rules it added being deleted), and registers this process as the audit
listener (AUDIT_SET pid, what auditd does at start) until close.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType

from nodeaudit.hostaudit import lock as kernellock
from nodeaudit.hostaudit.guard import KernelAuditError, KernelAuditGuard

NETLINK_AUDIT = 9
AUDIT_GET = 1000
AUDIT_SET = 1001
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
STATUS_ENABLED, STATUS_FAILURE, STATUS_PID, STATUS_RATE_LIMIT, STATUS_BACKLOG_LIMIT = 1, 2, 4, 8, 16
STATUS_BACKLOG_WAIT_TIME = 32
_STATUS_FIELDS = ("mask", "enabled", "failure", "pid", "rate_limit", "backlog_limit", "lost", "backlog",
                  "feature_bitmap", "backlog_wait_time", "backlog_wait_time_actual")
_NLMSGHDR = struct.Struct("=IHHII")
_RCVBUF = 16 * 1024 * 1024
# SO_RCVBUFFORCE (root: past net.core.rmem_max); Python names it only on some builds.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class EstimateError(KernelAuditError):
    """A problem the user must fix (not root, no kernel audit, another daemon): printed as is."""


@dataclass
class Record:
    type: int
    text: str
    received: float


def _nlmsg(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload


class AuditSocket:
    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
            self.sock.bind((0, 0))
        except OSError as e:
            raise EstimateError(f"kernel audit is not available here (audit netlink socket: {e.strerror})") from None
        # The kernel's audit thread blocks on a full socket, then audited processes wait in the
        # backlog: ask for a large buffer, beyond net.core.rmem_max when root (RCVBUFFORCE).
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        self.seq = 0
        self.pending: list[Record] = []

    def close(self) -> None:
        self.sock.close()

    def _messages(self, data: bytes) -> Iterator[tuple[int, int, bytes]]:
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, msg_type, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if msg_type >= 1100 and offset == 0:
                # The kernel sends each audit record as its own datagram and, for compatibility
                # with old userspace, sets nlmsg_len to the payload length WITHOUT the header
                # (kernel/audit.c audit_log_end). libaudit reads the whole datagram; so do we.
                yield msg_type, seq, data[_NLMSGHDR.size:]
                return
            if length < _NLMSGHDR.size:
                break
            yield msg_type, seq, data[offset + _NLMSGHDR.size: offset + length]
            offset += (length + 3) & ~3

    def _request(self, msg_type: int, payload: bytes = b"") -> bytes | None:
        """Send a request with ACK; returns the reply payload of the same type (AUDIT_GET) or None."""
        self.seq += 1
        seq = self.seq
        try:
            self.sock.send(_nlmsg(msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, payload))
        except OSError as e:
            raise EstimateError(f"kernel audit refused the request: {e.strerror}") from None
        reply: bytes | None = None
        acked = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (acked and (reply is not None or msg_type != AUDIT_GET)):
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                break
            for t, s, body in self._messages(data):
                if t == NLMSG_ERROR and s == seq:
                    (code,) = struct.unpack_from("=i", body)
                    if code != 0:
                        err = -code
                        if err == errno.EPERM:
                            raise EstimateError("kernel audit refused: operation not permitted (run as root in "
                                                "the initial PID and user namespace)")
                        raise EstimateError(f"kernel audit request {msg_type} failed: {os.strerror(err)}")
                    acked = True
                elif t == msg_type and s == seq:
                    reply = body
                elif t >= 1100:
                    self.pending.append(Record(t, body.rstrip(b"\0").decode("utf-8", "replace"), time.monotonic()))
        if not acked:
            raise EstimateError(f"kernel audit did not answer request {msg_type}")
        return reply

    def status(self) -> dict[str, int]:
        body = self._request(AUDIT_GET)
        if body is None:
            raise EstimateError("kernel audit sent no status")
        body = body[: 4 * len(_STATUS_FIELDS)].ljust(4 * len(_STATUS_FIELDS), b"\0")
        return dict(zip(_STATUS_FIELDS, struct.unpack(f"={len(_STATUS_FIELDS)}I", body), strict=True))

    def set_status(self, mask: int, **values: int) -> None:
        fields = {name: 0 for name in _STATUS_FIELDS}
        fields.update(values, mask=mask)
        self._request(AUDIT_SET, struct.pack(f"={len(_STATUS_FIELDS)}I", *(fields[n] for n in _STATUS_FIELDS)))

    def receive(self, until: float) -> list[Record]:
        """Records until the monotonic deadline `until` (nothing but what is pending once it passed:
        use drain() to read what is queued without waiting)."""
        out, self.pending = self.pending, []
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return out
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 17)
            except TimeoutError:
                return out
            except OSError as e:
                self._raise_overflow(e)
                raise
            self._parse(data, out)

    def drain(self) -> list[Record]:
        """Every record queued on the socket now, without waiting (MSG_DONTWAIT until it is empty)."""
        out, self.pending = self.pending, []
        # Non-blocking mode too: with a timeout set, Python polls first and raises TimeoutError.
        self.sock.settimeout(0.0)
        while True:
            try:
                data = self.sock.recv(1 << 17, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            except OSError as e:
                self._raise_overflow(e)
                raise
            self._parse(data, out)

    @staticmethod
    def _raise_overflow(error: OSError) -> None:
        if error.errno == errno.ENOBUFS:
            raise EstimateError("the audit socket overflowed: records were lost; sample fewer execs") from None

    def _parse(self, data: bytes, out: list[Record]) -> None:
        now = time.monotonic()
        for t, _s, body in self._messages(data):
            if t >= 1100:
                out.append(Record(t, body.rstrip(b"\0").decode("utf-8", "replace"), now))


@dataclass
class KernelAuditSession:
    """Loads rules and listens; restores the kernel on close(). Use as a context manager.

    The lock, the checks and the restore of rules, enabled flag and limits are the
    ``KernelAuditGuard``'s (``keep_rules``: rules someone else loaded stay); this adds the netlink
    socket and the listener registration."""

    rules: Sequence[tuple[str, str]]
    """(auditctl text, `auditctl -l` listing) of each filter rule, in load order."""
    control: dict[str, int] = field(default_factory=dict)
    """rate_limit / backlog_limit / backlog_wait_time the policy sets."""
    lock_path: str | None = kernellock.KERNEL_AUDIT_LOCK
    auditctl: str = "auditctl"
    lock_timeout: float = 600
    sock: AuditSocket | None = None
    problems: list[str] = field(default_factory=list)
    guard: KernelAuditGuard | None = None
    _registered: bool = False
    _old_handlers: dict[int, object] = field(default_factory=dict)

    @property
    def added(self) -> list[str]:
        """The rules this session loaded (deleted again on close)."""
        return self.guard.added if self.guard is not None else []

    def open(self) -> KernelAuditSession:
        if os.geteuid() == 0 and shutil.which(self.auditctl) is None:
            raise EstimateError(f"{self.auditctl} not found: install auditd (apt-get install auditd / tdnf install audit)")
        self.guard = KernelAuditGuard(
            lock_path=self.lock_path, lock_timeout=self.lock_timeout, keep_rules=True, auditctl=self.auditctl,
            root_hint="nodeaudit estimate must run as root: it loads audit rules into the kernel",
            daemon_hint="estimate reads records the way auditd does, so it only runs where no audit daemon "
                        "is running; stop it or use another machine")
        try:
            try:
                self.guard.open()
            except KernelAuditError as error:
                raise EstimateError(str(error)) from None
            self.sock = AuditSocket()
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[sig] = signal.signal(sig, _raise_exit)
            self._load()
            self.sock.set_status(STATUS_PID, pid=os.getpid())
            self._registered = True
            self.sock.set_status(STATUS_ENABLED, enabled=1)
        except BaseException:
            self.close()
            raise
        return self

    def _load(self) -> None:
        assert self.sock is not None and self.guard is not None
        setters = {"rate_limit": STATUS_RATE_LIMIT, "backlog_limit": STATUS_BACKLOG_LIMIT,
                   "backlog_wait_time": STATUS_BACKLOG_WAIT_TIME}
        for key, value in self.control.items():
            self.sock.set_status(setters[key], **{key: value})
        present = set(self.guard.initial_rules)
        for text, listing in self.rules:
            if listing in present:
                continue  # someone else's identical rule: use it, leave it
            res = self.guard.add_rule(text)
            if res.returncode != 0:
                raise EstimateError(f"the kernel refused rule `{text}`: {(res.stderr or res.stdout).strip()}")

    def close(self) -> list[str]:
        """Restore everything; returns what could not be restored (empty when all is as found)."""
        try:
            if self.sock is not None and self._registered:
                with contextlib.suppress(EstimateError, OSError):
                    if self.sock.status()["pid"] == os.getpid():
                        self.sock.set_status(STATUS_PID, pid=0)
                self._registered = False
        finally:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            if self.guard is not None:
                self.problems.extend(self.guard.close())
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
            self._old_handlers.clear()
        return self.problems

    def __enter__(self) -> KernelAuditSession:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
