"""Helpers for the host tests and benches: audit events as they reach /dev/log, grouped by event.

Builds on hostlib (the rootfs harness; hostlib never imports this module); nothing here touches
kernel audit by itself.
Every exec on the machine is audited while rules are loaded, and the marker travels through the
wrapper processes (unshare, sh, chroot) too, so an event is picked by its SYSCALL `exe=` *and* the
marker in its EXECVE, then all datagrams of the same event serial are collected.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from tests.host import hostlib

SERIAL = re.compile(r"msg=audit\(([0-9.]+:[0-9]+)\)")
TYPE = re.compile(r"type=([A-Z_]+) ")


def serial_of(message: str) -> str | None:
    found = SERIAL.search(message)
    return found.group(1) if found else None


def type_of(message: str) -> str | None:
    found = TYPE.search(message)
    return found.group(1) if found else None


@dataclass
class Event:
    serial: str
    messages: list[str]

    @property
    def types(self) -> list[str]:
        return sorted(t for t in (type_of(m) for m in self.messages) if t)

    def of_type(self, kind: str) -> list[str]:
        return [m for m in self.messages if type_of(m) == kind]

    @property
    def bytes(self) -> int:
        return sum(len(m.encode()) for m in self.messages)


def by_serial(messages: Sequence[str]) -> dict[str, list[str]]:
    """Datagrams grouped by event serial (in arrival order); those without one are left out."""
    grouped: dict[str, list[str]] = {}
    for msg in messages:
        serial = serial_of(msg)
        if serial:
            grouped.setdefault(serial, []).append(msg)
    return grouped


def events_of(messages: Sequence[str], exe: str, marker: str) -> list[Event]:
    """Every event whose SYSCALL exe is `exe` and whose EXECVE carries `marker` (a loop's execs)."""
    return [Event(serial, msgs) for serial, msgs in by_serial(messages).items()
            if any(type_of(m) == "SYSCALL" and f'exe="{exe}"' in m for m in msgs)
            and any(type_of(m) == "EXECVE" and marker in m for m in msgs)]


def find_event(messages: Sequence[str], marker: str, exe: str) -> Event | None:
    """The event whose SYSCALL has exe="<exe>" and whose EXECVE carries `marker`."""
    events = events_of(messages, exe, marker)
    return events[0] if events else None


def find_exec_record(messages: Sequence[str], marker: str, key: str = "procmon") -> tuple[str, str] | None:
    """The EXECVE datagram carrying `marker` and the SYSCALL datagram of the same event with `key`.

    Every exec on the machine is audited and other programs log at authpriv too, so the match is
    on the marker and the event serial, never on "any <86> line"."""
    for msgs in by_serial(messages).values():
        execve = next((m for m in msgs if type_of(m) == "EXECVE" and marker in m), None)
        syscall = next((m for m in msgs if type_of(m) == "SYSCALL" and f'key="{key}"' in m), None)
        if execve is not None and syscall is not None:
            return execve, syscall
    return None


def run_marker(root: hostlib.Rootfs, program: str = "/bin/echo") -> str:
    """Exec `program MARKER` inside the root; returns the marker."""
    marker = f"nodeaudit-marker-{uuid.uuid4().hex}"
    res = root.run(program, marker)
    assert res.rc == 0, res
    return marker


def wait_event(devlog: hostlib.DevLog, marker: str, exe: str, timeout: float = 10.0,
               settle: float = 0.3) -> Event | None:
    """Wait for the marker's event, then a little longer so its trailing records (EOE) arrive."""
    found = devlog.wait_for(lambda msgs: find_event(msgs, marker, exe), timeout=timeout)
    if not found:
        return None
    devlog.drain(settle)
    return find_event(devlog.messages, marker, exe)


def exec_loop(root: hostlib.Rootfs, count: int, program: str = "/bin/true", marker: str = "") -> float:
    """`count` fork+execs of `program` by one shell inside the root; the loop's wall time in seconds.

    The shell's own start (unshare, chroot) is outside the timed part: the loop times itself with
    the monotonic clock of the kernel (/proc/uptime has only 10 ms resolution, so use date +%s%N).
    """
    script = (
        'n=$1; p=$2; m=$3; s=$(date +%s%N); i=0; '
        'while [ "$i" -lt "$n" ]; do "$p" "$m"; i=$((i+1)); done; '
        'e=$(date +%s%N); echo $((e - s))'
    )
    res = root.run("sh", "-c", script, "sh", str(count), program, marker or "x")
    assert res.rc == 0, res
    return int(res.stdout.strip().splitlines()[-1]) / 1e9


def collect_until(devlog: hostlib.DevLog, predicate, timeout: float = 30.0, quiet: float = 0.5) -> None:
    """Drain until `predicate(messages)` holds, then until the socket is quiet for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate(devlog.messages) and time.monotonic() < deadline:
        devlog.drain(0.1)
    while devlog.drain(quiet):
        pass


class Draining:
    """Read /dev/log in a thread while a workload runs, as the node's syslog daemon does.

    A datagram socket holds only net.unix.max_dgram_qlen (default 10) messages: a listener that
    does not read blocks audisp-syslog, then auditd, then the kernel backlog, and finally every
    audited exec waits backlog_wait_time. Measured here: 46x slower execs for `standard`.
    """

    def __init__(self, devlog: hostlib.DevLog):
        import threading

        self.devlog = devlog
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.devlog.drain(0.05)

    def __enter__(self) -> Draining:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
