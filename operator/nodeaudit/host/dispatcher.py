"""nodeaudit's auditd plugin: one JSON syslog message per audit event, attributed to its pod.

auditd (3.x: plugins.d; 2.x: audispd's plugins.d) starts it as `python3 dispatcher.py CONFIG` with
`format = string`: audit records arrive on stdin, one a line. Records of one event (same serial)
become one JSON object (nodeaudit.core.records, shipped next to this file), attributed to its
container through /proc/<pid>/cgroup and containerd's task state, and go to /dev/log as one
datagram `<PRI>nodeaudit: {...}`.

Never blocks auditd: the socket is non-blocking; while syslog is behind, a bounded queue (4,096
messages) holds what it cannot take yet, and beyond that, or with the socket gone, messages are
dropped and counted. Reading stdin is all this process ever waits for. A slow plugin would fill
auditd's queue (q_depth; overflow_action decides, default syslog: events lost there), so the
hot path stays small and the cache keeps /proc and containerd reads to one stat per event.

Counters go to a JSON state file (apply.sh puts them in its result line). SIGHUP re-reads the
config (auditd passes its HUP on); SIGTERM or end of input flushes the open events and exits.
Standard library only, Python 3.8+ (Ubuntu 20.04 and later, Azure Linux 2 and 3).
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import signal
import socket
import sys
import time
from collections import OrderedDict, deque
from typing import Any

try:  # in the package (tests, bench)
    from nodeaudit.core import records
except ImportError:  # on the node: records.py is installed next to this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import records  # type: ignore[no-redef,import-not-found]

DEFAULTS: dict[str, Any] = {
    "facility": "LOG_AUTHPRIV",
    "priority": "LOG_INFO",
    "socket": "/dev/log",
    "stateFile": "/var/lib/nodeaudit/state/dispatcher.json",
    "containerdState": "/run/containerd/io.containerd.runtime.v2.task",
    "proc": "/proc",
    "redact": [],
    "excludedTypes": [],
    "idleSeconds": 0.5,
    "cacheSize": 4096,
    "argvBytes": records.ARGV_MAX_BYTES,
    "pathsMax": records.PATHS_MAX,
    "sendQueue": 4096,
}
#: apply.sh's canary marker (nodeaudit.core.delivery.CANARY_RE; this file runs alone on the node)
CANARY = re.compile(r"nodeaudit-canary id=([A-Za-z0-9._-]+:[0-9a-f]{1,64}:[0-9]+(?:-[0-9]+)?) policy=")
_CONTAINER = re.compile(r"(?:cri-containerd-|crio-|docker-|containerd-)?([0-9a-f]{64})(?:\.scope)?$")
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_ANNOTATIONS = {
    "name": "io.kubernetes.cri.container-name",
    "pod": "io.kubernetes.cri.sandbox-name",
    "namespace": "io.kubernetes.cri.sandbox-namespace",
    "podUid": "io.kubernetes.cri.sandbox-uid",
    "image": "io.kubernetes.cri.image-name",
}


def load_config(path: str | None) -> dict[str, Any]:
    config = dict(DEFAULTS)
    if path:
        with open(path, encoding="utf-8") as handle:
            config.update(json.load(handle))
    return config


def cgroup_container(text: str) -> tuple[str, str | None] | None:
    """(container id, pod uid or None) from /proc/<pid>/cgroup, v1 or v2, systemd or cgroupfs
    driver: `.../kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope` or
    `/kubepods/burstable/pod<uid>/<id>`. None for a host process."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2].rstrip("/")
        found = _CONTAINER.search(path.rsplit("/", 1)[-1])
        if found is None:
            continue
        pod = _POD.search(path)
        return found.group(1), pod.group(1).replace("_", "-") if pod else None
    return None


class Attributor:
    """pid → container, with a bounded cache keyed by (pid, start time): a reused pid has another
    start time, so it never inherits a dead process's pod. A process that started after the event
    is such a reuse and is not asked; the parent is asked instead, then the answer is partial."""

    def __init__(self, config: dict[str, Any]):
        self.proc = config["proc"]
        self.state = config["containerdState"]
        self.size = int(config["cacheSize"])
        self.by_pid: OrderedDict[tuple[int, int], dict[str, Any] | None] = OrderedDict()
        self.by_id: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.boot = self._boot_time()

    def _boot_time(self) -> float:
        try:
            with open(os.path.join(self.proc, "stat"), encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("btime "):
                        return float(line.split()[1])
        except OSError:
            pass
        return 0.0

    def _start(self, pid: int) -> int | None:
        try:
            with open(f"{self.proc}/{pid}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            return None
        try:
            fields = data[data.rindex(b")") + 2:].split()
            # Exited (a zombie) or exiting (PF_EXITING): its cgroup file may no longer name the
            # container (a zombie's reads as the root), so the process counts as gone.
            if fields[0] in (b"Z", b"X") or int(fields[6]) & 0x4:
                return None
            return int(fields[19])
        except (ValueError, IndexError):
            return None

    def _lookup(self, pid: int, not_after: float) -> tuple[bool, dict[str, Any] | None]:
        """(found, container) for a live pid that started no later than `not_after`."""
        start = self._start(pid)
        if start is None or (self.boot and self.boot + start / self.tick > not_after + 1.0):
            return False, None
        key = (pid, start)
        if key in self.by_pid:
            self.by_pid.move_to_end(key)
            return True, self.by_pid[key]
        try:
            with open(f"{self.proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            return False, None
        if self._start(pid) != start:
            return False, None  # exited and reused while we read
        found = cgroup_container(text)
        container = self.container(*found) if found else None
        self.by_pid[key] = container
        if len(self.by_pid) > self.size:
            self.by_pid.popitem(last=False)
        return True, container

    def resolve(self, pid: int | None, ppid: int | None, when: float) -> tuple[bool, dict[str, Any] | None]:
        """(answered, container): not answered when neither the process nor its parent was found."""
        for candidate in (pid, ppid):
            if candidate is None or candidate <= 0:
                continue
            found, container = self._lookup(candidate, when)
            if found:
                return True, container
        return False, None

    def container(self, cid: str, pod_uid: str | None) -> dict[str, Any]:
        now = time.monotonic()
        cached = self.by_id.get(cid)
        if cached is not None and (not cached[1].get("unresolved") or now - cached[0] < 5.0):
            self.by_id.move_to_end(cid)
            return cached[1]
        info = self._task_state(cid, pod_uid)
        self.by_id[cid] = (now, info)
        if len(self.by_id) > self.size:
            self.by_id.popitem(last=False)
        return info

    def _task_state(self, cid: str, pod_uid: str | None) -> dict[str, Any]:
        try:
            namespaces = sorted(os.listdir(self.state), key=lambda n: n != "k8s.io")
        except OSError:
            namespaces = []
        for namespace in namespaces:
            try:
                with open(os.path.join(self.state, namespace, cid, "config.json"), encoding="utf-8") as handle:
                    spec = json.load(handle)
            except (OSError, ValueError):
                continue
            notes = spec.get("annotations") if isinstance(spec, dict) else None
            if not isinstance(notes, dict):
                break
            info: dict[str, Any] = {"id": cid}
            for field, annotation in _ANNOTATIONS.items():
                value = notes.get(annotation)
                info[field] = value if isinstance(value, str) else None
            if info["podUid"] is None:
                info["podUid"] = pod_uid
            if info["pod"] is None and info["namespace"] is None:
                info["unresolved"] = True
            return info
        partial: dict[str, Any] = {"id": cid, "unresolved": True}
        if pod_uid:
            partial["podUid"] = pod_uid
        return partial


class Syslog:
    """Datagrams to /dev/log that never block: while the syslog daemon is behind, up to `limit`
    messages wait here (sent as the socket becomes writable again); beyond that, and whenever the
    socket is gone, messages are dropped and counted."""

    def __init__(self, path: str, pri: int, limit: int = 4096):
        self.path = path
        self.pri = pri
        self.limit = limit
        self.sock: socket.socket | None = None
        self.retry_at = 0.0
        self.queue: deque[bytes] = deque()
        self.sent = self.dropped = self.bytes = 0

    def _connect(self) -> bool:
        now = time.monotonic()
        if now < self.retry_at:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            self.retry_at = now + 1.0
            return False
        self.sock = sock
        return True

    def _try(self, data: bytes) -> bool | None:
        """True: sent; False: the daemon is behind (try again later); None: no socket (drop)."""
        if self.sock is None and not self._connect():
            return None
        assert self.sock is not None
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as error:
            # Socket gone or syslog restarted: reconnect at most once a second.
            self.sock.close()
            self.sock = None
            if error.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                self.retry_at = time.monotonic() + 1.0
            return None
        self.sent += 1
        self.bytes += len(data)
        return True

    def send(self, message: str) -> bool:
        """True: sent or queued; False: dropped."""
        data = records.syslog_datagram(self.pri, message)
        if not self.queue:
            outcome = self._try(data)
            if outcome:
                return True
            if outcome is None:
                self.dropped += 1
                return False
        if len(self.queue) >= self.limit:
            self.dropped += 1
            return False
        self.queue.append(data)
        return True

    def flush(self) -> None:
        while self.queue:
            outcome = self._try(self.queue[0])
            if outcome is False:
                return
            self.queue.popleft()
            if outcome is None:
                self.dropped += 1

    def waiting(self) -> list[socket.socket]:
        """The socket to wait for writability on, when messages wait."""
        return [self.sock] if self.queue and self.sock is not None else []


class Dispatcher:
    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self.counters = {"events": 0, "unparsed": 0, "containersResolved": 0, "containersUnresolved": 0,
                         "hostProcesses": 0}
        self.started = time.time()
        self.reload()
        self.pending_attribution: dict[tuple[int, int, int], tuple[bool, dict[str, Any] | None]] = {}
        self.last_state = 0.0
        self.last_canary = ""

    def reload(self) -> None:
        self.config = load_config(self.config_path)
        pri = records.syslog_pri(self.config["facility"], self.config["priority"])
        if getattr(self, "syslog", None) is None:
            self.syslog = Syslog(self.config["socket"], pri, int(self.config["sendQueue"]))
        else:  # a reload keeps the counters and what waits to be sent
            self.syslog.path, self.syslog.pri = self.config["socket"], pri
        self.attributor = Attributor(self.config)
        self.redactions = records.compile_redactions(self.config["redact"])
        self.limits = records.Limits(argv_bytes=int(self.config["argvBytes"]), paths=int(self.config["pathsMax"]))
        self.excluded = tuple(self.config["excludedTypes"])
        self.coalescer = records.Coalescer(idle=float(self.config["idleSeconds"]), excluded_types=self.excluded)

    def emit(self, message: str) -> bool:
        """True when the message is on its way to /dev/log (sent or queued), False when dropped."""
        return self.syslog.send(message)

    def note_canary(self, group: list[Any]) -> None:
        """apply.sh's canary (an audit user message) is on its way to syslog: name it in the state
        file at once, so that apply.sh can confirm it on the node (``lastCanary``)."""
        for record in group:
            found = CANARY.search(record.raw)
            if found:
                self.last_canary = found.group(1)
                self.write_state()
                return

    def handle(self, items: list[Any]) -> None:
        for item in items:
            if isinstance(item, records.Unparsed):
                self.counters["unparsed"] += 1
                self.emit(records.redact([item.raw], self.redactions)[0][0])
                continue
            self.finish(item)

    def finish(self, group: list[Any]) -> None:
        ident = group[0].event_id
        answered_container = self.pending_attribution.pop(ident, None)
        try:
            event = records.build_event(group, limits=self.limits, excluded_types=self.excluded,
                                        redactions=self.redactions)
        except Exception:  # noqa: BLE001 - a record we cannot read is passed on, never lost
            for record in group:
                self.counters["unparsed"] += 1
                self.emit(records.redact([record.raw], self.redactions)[0][0])
            return
        if answered_container is None and event.get("pid") is not None:
            answered_container = self.attributor.resolve(event.get("pid"), event.get("ppid"), group[0].seconds + 1)
        answered, container = answered_container or (False, None)
        if container is not None:
            event["container"] = container
            key = "containersUnresolved" if container.get("unresolved") else "containersResolved"
            self.counters[key] += 1
        elif answered:
            event["container"] = None
            self.counters["hostProcesses"] += 1
        elif event.get("pid") is not None:
            # Neither the process nor its parent is left: say so rather than guess "host".
            event["container"] = {"id": None, "unresolved": True}
            self.counters["containersUnresolved"] += 1
        self.counters["events"] += 1
        if self.emit(records.json_message(event)):
            self.note_canary(group)

    def feed(self, line: str, now: float) -> None:
        items = self.coalescer.feed(line, now)
        # Ask /proc as soon as the event's SYSCALL record arrives: short-lived processes go fast.
        record = self.coalescer.last
        if record is not None and record.type == "SYSCALL" and record.event_id in self.coalescer.pending:
            fields = record.fields
            self.pending_attribution[record.event_id] = self.attributor.resolve(
                _int(fields.get("pid")), _int(fields.get("ppid")), record.seconds + 1)
        self.handle(items)

    def write_state(self, final: bool = False) -> None:
        path = self.config["stateFile"]
        state: dict[str, Any] = {
            **self.counters, "sent": self.syslog.sent, "dropped": self.syslog.dropped, "bytes": self.syslog.bytes,
            "queued": len(self.syslog.queue), "cpuSeconds": round(sum(os.times()[:2]), 3),
            "pid": os.getpid(), "startedAt": int(self.started), "updatedAt": int(time.time()), "running": not final,
            "lastCanary": self.last_canary}
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(state, handle, sort_keys=True)
            os.replace(tmp, path)
        except OSError:
            pass

    def run(self, fd: int = 0) -> int:
        stop = {"term": False, "hup": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("term", True))
        signal.signal(signal.SIGHUP, lambda *_: stop.__setitem__("hup", True))
        buffer = b""
        while not stop["term"]:
            try:
                ready, writable, _ = select.select([fd], self.syslog.waiting(), [], 0.25)
            except InterruptedError:
                ready, writable = [], []
            if writable or (self.syslog.queue and self.syslog.sock is None):
                self.syslog.flush()
            now = time.monotonic()
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except InterruptedError:
                    continue
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    self.feed(raw.decode("utf-8", "backslashreplace"), now)
            self.handle(self.coalescer.expire(now))
            if stop["hup"]:
                stop["hup"] = False
                self.handle(self.coalescer.flush())
                self.reload()
            if now - self.last_state >= 2.0:
                self.last_state = now
                self.write_state()
        if buffer:
            self.feed(buffer.decode("utf-8", "backslashreplace"), time.monotonic())
        self.handle(self.coalescer.flush())
        # What still waits gets a last, short chance (never long: auditd may be stopping us).
        deadline = time.monotonic() + 1.0
        while self.syslog.queue and time.monotonic() < deadline:
            select.select([], self.syslog.waiting(), [], 0.05)
            self.syslog.flush()
        self.syslog.dropped += len(self.syslog.queue)
        self.syslog.queue.clear()
        self.write_state(final=True)
        return 0


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        sys.stderr.write("usage: dispatcher.py [CONFIG.json]   (started by auditd as a plugin; "
                         "audit records on stdin)\n  example: python3 dispatcher.py /var/lib/nodeaudit/dispatcher/config.json < records.log\n")
        return 2
    try:
        dispatcher = Dispatcher(argv[1] if len(argv) == 2 else None)
    except (OSError, ValueError, KeyError, re.error) as error:
        sys.stderr.write(f"nodeaudit dispatcher: bad config {argv[1] if len(argv) == 2 else ''}: {error}\n")
        return 2
    return dispatcher.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
