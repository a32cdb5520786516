"""auditd's text records → one JSON-ready event per audit serial. Standard library only.

This module ships verbatim in the bundle next to the node-side dispatcher (host/dispatcher.py),
which imports it; the operator side (tests, `nodeaudit estimate`, the bench) imports the same file
as `nodeaudit.core.records`. It never touches the system: lines in, dicts out.

What a plugin receives (auditd-plugins(5), `format = string`): one record per line,
`type=T msg=audit(SECONDS.MILLIS:SERIAL): field=value ...`, optionally prefixed with `node=NAME `
(name_format) and, in audit 3.x with `log_format = ENRICHED`, followed by a 0x1d separator and
interpreted fields (`ARCH=x86_64 SYSCALL=execve AUID="unset" ...`). Audit 2.x's audispd sends the
same lines without the enriched part. The records of one event share the serial; the kernel ends
a syscall event with an EOE record, but lines of different events can interleave, and single
records from user space (USER_*, CRED_*, DAEMON_*...) come without an EOE.

Values: a quoted value is literal text; in the fields the kernel may escape (argv, names, comm,
exe, cwd, proctitle, key), an unquoted value is hex of the raw bytes (the kernel encodes anything
with a space, a quote, a control character or non-ASCII); `(null)` means absent.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

UNSET_ID = 4294967295  # (uid_t)-1: auid and ses of a process that never logged in
_HEADER = re.compile(r"^(?:node=(\S+) )?type=([A-Za-z0-9_]+) msg=audit\((\d+)\.(\d+):(\d+)\): ?")
# A user-space message carries its own fields inside msg='...' (auditctl -m, sudo, sshd): quoted
# whole, so the message keeps its spaces, and its inner fields (exe, res, ...) are read too.
_FIELD = re.compile(r"""([A-Za-z0-9_\[\]]+)=("[^"]*"|'[^']*'|\S*)""")
_HEX = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")
_ARG = re.compile(r"^a(\d+)(?:\[(\d+)\])?$")
# Fields whose unquoted value is hex-encoded text (the kernel's audit_log_untrustedstring).
_ENCODED = frozenset({"name", "comm", "exe", "cwd", "proctitle", "key", "old", "new", "path", "data", "acct"})
# Record types that are a whole event by themselves (user space and daemon messages: no EOE).
_STANDALONE_PREFIXES = ("USER_", "CRED_", "SERVICE_", "DAEMON_", "ANOM_", "CRYPTO_", "VIRT_", "LOGIN",
                        "SYSTEM_", "MAC_", "AVC", "SECCOMP", "GRP_", "ADD_", "DEL_", "ACCT_", "CHGRP_",
                        "CHUSER_", "ROLE_", "LABEL_", "TEST", "TRUSTED_APP", "KERNEL", "CONFIG_CHANGE")

# Syscall numbers of the calls nodeaudit's presets audit, for lines without the enriched part
# (audit 2.x, log_format RAW). The enriched SYSCALL= field wins when present.
_ARCH_NAMES = {"c000003e": "x86_64", "40000003": "i386", "c00000b7": "aarch64", "40000028": "arm"}
_SYSCALLS: Mapping[str, Mapping[int, str]] = {
    "x86_64": {59: "execve", 322: "execveat", 105: "setuid", 106: "setgid", 113: "setreuid",
               114: "setregid", 117: "setresuid", 119: "setresgid", 122: "setfsuid", 123: "setfsgid",
               175: "init_module", 313: "finit_module", 176: "delete_module", 2: "open", 257: "openat",
               82: "rename", 264: "renameat", 87: "unlink", 263: "unlinkat", 90: "chmod", 92: "chown",
               1: "write", 76: "truncate", 77: "ftruncate", 85: "creat", 188: "setxattr"},
    "i386": {11: "execve", 358: "execveat", 213: "setuid32", 214: "setgid32", 203: "setreuid32",
             204: "setregid32", 208: "setresuid32", 210: "setresgid32", 215: "setfsuid32",
             216: "setfsgid32", 128: "init_module", 350: "finit_module", 129: "delete_module"},
    "aarch64": {221: "execve", 281: "execveat", 146: "setuid", 144: "setgid", 145: "setreuid",
                143: "setregid", 147: "setresuid", 149: "setresgid", 151: "setfsuid", 152: "setfsgid",
                105: "init_module", 273: "finit_module", 106: "delete_module", 56: "openat"},
}

ARGV_MAX_BYTES = 4096  # total bytes of argv kept in one event
ARG_MAX_BYTES = 1024  # bytes of any one argument kept
PATHS_MAX = 8  # PATH records kept per event
NAME_MAX_BYTES = 512  # bytes of one path name kept
RAW_MAX_BYTES = 4096  # bytes of an unparsable line passed on
REDACTED = "<redacted>"


@dataclass(frozen=True)
class Record:
    """One parsed line."""

    type: str
    seconds: int
    millis: int
    serial: int
    fields: Mapping[str, str]
    raw: str
    node: str | None = None
    enriched: Mapping[str, str] = field(default_factory=dict)

    @property
    def event_id(self) -> tuple[int, int, int]:
        return (self.seconds, self.millis, self.serial)


@dataclass(frozen=True)
class Unparsed:
    """A line that is not an audit record: passed on raw (bounded), never dropped."""

    raw: str


class RecordError(ValueError):
    pass


def _fields(text: str) -> dict[str, str]:
    out = {m.group(1): m.group(2) for m in _FIELD.finditer(text)}
    for value in [v for v in out.values() if len(v) >= 2 and v[0] == "'" and v[-1] == "'"]:
        for key, inner in _fields(value[1:-1]).items():
            out.setdefault(key, inner)
    return out


def parse_line(line: str) -> Record:
    """One auditd text record; RecordError when the line is not one."""
    line = line.rstrip("\r\n")
    head = _HEADER.match(line)
    if head is None:
        raise RecordError("not an audit record (no type=... msg=audit(...): header)")
    node, kind, seconds, millis, serial = head.groups()
    body = line[head.end():]
    enriched: dict[str, str] = {}
    if "\x1d" in body:
        body, _, extra = body.partition("\x1d")
        enriched = {k: unquote(v) for k, v in _fields(extra).items()}
    return Record(type=kind, seconds=int(seconds), millis=int(millis), serial=int(serial),
                  fields=_fields(body), raw=line, node=node, enriched=enriched)


def unquote(value: str) -> str:
    """A literal (quoted) value without its quotes; other values as they are."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def decode_value(value: str | None) -> str | None:
    """Text of a field the kernel may hex-encode: quoted → literal, hex → decoded, (null) → None."""
    if value is None or value in ("(null)", "(none)", ""):
        return None
    if value[0] in "\"'":
        return unquote(value)
    if _HEX.match(value):
        return bytes.fromhex(value).decode("utf-8", "backslashreplace")
    return value


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value, 0) if value.startswith("0x") else int(value)
    except ValueError:
        return None


def _id(value: str | None) -> int | None:
    """auid/ses: None when unset (-1 as unsigned, or the word `unset`)."""
    number = _int(value)
    return None if number is None or number == UNSET_ID or number == -1 else number


def _clip(text: str, limit: int) -> tuple[str, bool]:
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def rfc3339(seconds: int, millis: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def execve_argv(fields: Mapping[str, str]) -> list[str]:
    """Arguments of an EXECVE record: a0.., or the a1[0] a1[1].. chunks of a long argument."""
    argc = _int(fields.get("argc"))
    parts: dict[int, dict[int, str]] = {}
    for name, value in fields.items():
        match = _ARG.match(name)
        if match is None:
            continue
        index, chunk = int(match.group(1)), match.group(2)
        parts.setdefault(index, {})[int(chunk) if chunk is not None else -1] = value
    count = argc if argc is not None else (max(parts) + 1 if parts else 0)
    argv = []
    for index in range(count):
        chunks = parts.get(index)
        if not chunks:
            continue  # the kernel ran out of room for this one (a later EXECVE record has it)
        # Chunked arguments (a1[0]=.. a1[1]=..) are hex: the kernel encodes each chunk the same way.
        value = chunks[-1] if -1 in chunks else "".join(unquote(chunks[i]) for i in sorted(chunks))
        if value.startswith('"'):
            argv.append(unquote(value))
        elif _HEX.match(value):
            argv.append(bytes.fromhex(value).decode("utf-8", "backslashreplace"))
        else:
            argv.append(value)
    return argv


def proctitle_argv(value: str | None) -> list[str]:
    if value is None or value == "(null)":
        return []
    if value.startswith('"'):
        return [unquote(value)]
    if _HEX.match(value):
        return [a.decode("utf-8", "backslashreplace") for a in bytes.fromhex(value).split(b"\0") if a]
    return [value]


def _syscall_name(record: Record) -> str | None:
    name = record.enriched.get("SYSCALL")
    if name:
        return name
    number = _int(record.fields.get("syscall"))
    if number is None:
        return None
    arch = _ARCH_NAMES.get(record.fields.get("arch", ""), "")
    return _SYSCALLS.get(arch, {}).get(number, str(number))


@dataclass
class Limits:
    argv_bytes: int = ARGV_MAX_BYTES
    arg_bytes: int = ARG_MAX_BYTES
    paths: int = PATHS_MAX
    name_bytes: int = NAME_MAX_BYTES


def bound_argv(argv: Sequence[str], limits: Limits) -> tuple[list[str], bool]:
    out: list[str] = []
    used = 0
    cut = False
    for arg in argv:
        arg, clipped = _clip(arg, limits.arg_bytes)
        cut = cut or clipped
        size = len(arg.encode("utf-8", "backslashreplace")) + 1
        if used + size > limits.argv_bytes:
            room = limits.argv_bytes - used - 1
            if room > 0:
                out.append(_clip(arg, room)[0])
            cut = True
            break
        out.append(arg)
        used += size
    return out, cut


def compile_redactions(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    """Compiled `spec.redact` patterns; re.error (with .pos) for the first bad one."""
    return [re.compile(p) for p in patterns]


def redact(argv: list[str], patterns: Sequence[re.Pattern[str]]) -> tuple[list[str], bool]:
    """Each pattern runs over the command line joined by spaces, so `--password[= ]\\S+` also
    matches `--password secret` given as two arguments; every argument a match touches has the
    touched part replaced by <redacted>. Returns the new argv and whether anything matched."""
    changed = False
    for pattern in patterns:
        joined = " ".join(argv)
        spans = [m.span() for m in pattern.finditer(joined) if m.end() > m.start()]
        if not spans:
            continue
        changed = True
        out = []
        start = 0
        for arg in argv:
            end = start + len(arg)
            pieces = []
            cursor = start
            for s, e in spans:
                if e <= start or s >= end:
                    continue
                pieces.append(joined[cursor:max(s, start)])
                pieces.append(REDACTED)
                cursor = min(e, end)
            pieces.append(joined[cursor:end])
            out.append("".join(pieces))
            start = end + 1
        argv = out
    return argv, changed


def build_event(records: Sequence[Record], *, limits: Limits | None = None,
                excluded_types: Iterable[str] = (),
                redactions: Sequence[re.Pattern[str]] = ()) -> dict[str, Any]:
    """The event's contract fields (docs/kql.md) from its records, in arrival order.

    Record types in `excluded_types` (the volume's) do not count, even when they arrive."""
    limits = limits or Limits()
    skip = set(excluded_types)
    kept = [r for r in records if r.type not in skip and r.type != "EOE"]
    first = records[0]
    by_type: dict[str, list[Record]] = {}
    for record in kept:
        by_type.setdefault(record.type, []).append(record)
    syscall = by_type.get("SYSCALL", [None])[0]
    main = syscall or (kept[0] if kept else first)
    f = main.fields
    event: dict[str, Any] = {"ts": rfc3339(first.seconds, first.millis), "serial": first.serial}
    if main.type != "SYSCALL":  # most events are syscalls: say the type only when it is not one
        event["type"] = main.type
    if first.node:
        event["node"] = first.node
    key = decode_value(f.get("key"))
    event["key"] = key.replace("\x01", ",") if key else None
    if syscall is not None:
        event["syscall"] = _syscall_name(syscall)
        success = f.get("success")
        event["success"] = None if success is None else success == "yes"
        event["exit"] = _int(f.get("exit"))
    event["exe"] = decode_value(f.get("exe"))
    event["comm"] = decode_value(f.get("comm"))
    argv: list[str] = []
    if "EXECVE" in by_type:
        # A long command line continues in further EXECVE records (`a1[1]=...` without argc).
        merged: dict[str, str] = {}
        for record in by_type["EXECVE"]:
            merged.update(record.fields)
        argv = execve_argv(merged)
    if not argv and "PROCTITLE" in by_type:
        argv = proctitle_argv(by_type["PROCTITLE"][0].fields.get("proctitle"))
    argv, redacted = redact(argv, redactions)
    argv, truncated = bound_argv(argv, limits)
    event["argv"] = argv
    if truncated:
        event["argvTruncated"] = True
    if redacted:
        event["argvRedacted"] = True
    cwd = by_type.get("CWD")
    if "CWD" not in skip:  # absent where the volume does not record it (lean), null when unknown
        event["cwd"] = decode_value(cwd[0].fields.get("cwd")) if cwd else None
    event["pid"] = _int(f.get("pid"))
    event["ppid"] = _int(f.get("ppid"))
    event["uid"] = _int(f.get("uid"))
    event["euid"] = _int(f.get("euid"))
    event["tty"] = decode_value(f.get("tty"))
    event["auid"] = _id(f.get("auid"))
    event["ses"] = _id(f.get("ses"))
    paths = by_type.get("PATH", [])
    if paths:
        out = []
        for record in paths[: limits.paths]:
            name = decode_value(record.fields.get("name"))
            if name is not None:
                name = _clip(name, limits.name_bytes)[0]
            out.append({"name": name, "nametype": record.fields.get("nametype")})
        event["paths"] = out
        if len(paths) > limits.paths:
            event["pathsTruncated"] = True
    others = sorted({r.type for r in kept} - {"SYSCALL", "EXECVE", "CWD", "PATH", "PROCTITLE"})
    if others:
        event["records"] = others
    if syscall is None and main.type != "SYSCALL":
        # Non-syscall events (user space messages): their own words, bounded.
        msg = decode_value(f.get("msg"))
        if msg is not None:
            event["msg"] = _clip(msg, limits.argv_bytes)[0]
    return event


TAG = "nodeaudit"
# The facilities and levels a policy may choose (core/policy.py), as syslog(3) numbers them.
FACILITIES: Mapping[str, int] = {"LOG_AUTH": 4, "LOG_AUTHPRIV": 10, "LOG_DAEMON": 3, "LOG_USER": 1, "LOG_SYSLOG": 5,
                                 **{f"LOG_LOCAL{i}": 16 + i for i in range(8)}}
PRIORITIES: Mapping[str, int] = {"LOG_EMERG": 0, "LOG_ALERT": 1, "LOG_CRIT": 2, "LOG_ERR": 3, "LOG_WARNING": 4,
                                 "LOG_NOTICE": 5, "LOG_INFO": 6, "LOG_DEBUG": 7}


def syslog_pri(facility: str, priority: str) -> int:
    """`<PRI>` of a message: facility * 8 + level; KeyError names an unknown one."""
    return FACILITIES[facility] * 8 + PRIORITIES[priority]


def json_message(event: Mapping[str, Any]) -> str:
    """The event as the dispatcher sends it: compact JSON, UTF-8 text kept as it is."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def syslog_datagram(pri: int, message: str) -> bytes:
    """The datagram for /dev/log: `<PRI>nodeaudit: message`. No pid, so the monitoring agent's
    ProcessName is `nodeaudit`; no timestamp, as Python's SysLogHandler sends it: the local syslog
    daemon (rsyslog, journald) stamps the time it received it, and the event carries its own
    exact `ts`, so 16 bytes a message are not paid twice."""
    return f"<{pri}>{TAG}: {message}".encode("utf-8", "backslashreplace")


def standalone(kind: str) -> bool:
    return kind.startswith(_STANDALONE_PREFIXES)


def execve_complete(records: Sequence[Record]) -> bool:
    """Whether these EXECVE records hold every argument argc announces (a long one comes in
    `aN[0]..` chunks, possibly over several records, until their length reaches `aN_len`)."""
    fields: dict[str, str] = {}
    for record in records:
        fields.update(record.fields)
    argc = _int(fields.get("argc"))
    if argc is None:
        return False
    for index in range(argc):
        if f"a{index}" in fields:
            continue
        total = _int(fields.get(f"a{index}_len"))
        if total is None:
            return False
        have = 0
        chunk = 0
        while f"a{index}[{chunk}]" in fields:
            have += len(unquote(fields[f"a{index}[{chunk}]"]))
            chunk += 1
        if have < total:
            return False
    return True


class Coalescer:
    """Groups records by event (seconds, millis, serial) and hands out whole events.

    The kernel writes a syscall event's records in one order: SYSCALL, the auxiliary records
    (EXECVE, ...), CWD, PATH, PROCTITLE, EOE. So an event is complete at its EOE, else at its
    PROCTITLE (the volumes drop EOE), else, where the volume drops PROCTITLE too (lean), an exec
    is complete once its EXECVE records hold every argument. A standalone record type (user
    space messages) is complete at once. Any other event when no record of it came for `idle`
    seconds (`expire`), when more than `max_pending` are open (oldest first), or at `flush`."""

    def __init__(self, idle: float = 0.5, max_pending: int = 1024, excluded_types: Iterable[str] = ()):
        self.idle = idle
        self.max_pending = max_pending
        self.without_proctitle = "PROCTITLE" in set(excluded_types)
        self.pending: OrderedDict[tuple[int, int, int], tuple[float, list[Record]]] = OrderedDict()
        self.last: Record | None = None  # the record of the last line fed, when it was one

    def feed(self, line: str, now: float | None = None) -> list[list[Record] | Unparsed]:
        """Completed events (and unparsable lines) after this line."""
        now = time.monotonic() if now is None else now
        self.last = None
        try:
            record = parse_line(line)
        except RecordError:
            text = line.rstrip("\r\n")
            if not text.strip():
                return []
            return [Unparsed(_clip(text, RAW_MAX_BYTES)[0])]
        self.last = record
        out: list[list[Record] | Unparsed] = []
        ident = record.event_id
        if record.type == "EOE":
            entry = self.pending.pop(ident, None)
            if entry is not None:
                out.append(entry[1])
            return out
        entry = self.pending.pop(ident, None)
        if entry is None and standalone(record.type):
            out.append([record])
            return out
        group = [record] if entry is None else [*entry[1], record]
        if record.type == "PROCTITLE" or (
                record.type == "EXECVE" and self.without_proctitle
                and execve_complete([r for r in group if r.type == "EXECVE"])):
            out.append(group)
            return out
        self.pending[ident] = (now, group)  # at the end: the dict stays in order of last record
        while len(self.pending) > self.max_pending:
            out.append(self.pending.popitem(last=False)[1][1])
        return out

    def expire(self, now: float | None = None) -> list[list[Record]]:
        now = time.monotonic() if now is None else now
        out = []
        while self.pending:
            ident, (seen, group) = next(iter(self.pending.items()))
            if now - seen < self.idle:
                break
            del self.pending[ident]
            out.append(group)
        return out

    def flush(self) -> list[list[Record]]:
        out = [records for _, records in self.pending.values()]
        self.pending.clear()
        return out


def events(lines: Iterable[str], **build: Any) -> list[dict[str, Any] | Unparsed]:
    """Every event of a finished stream of lines (tests, estimate): built, in completion order."""
    coalescer = Coalescer(idle=float("inf"), excluded_types=build.get("excluded_types", ()))
    out: list[dict[str, Any] | Unparsed] = []
    for line in lines:
        for item in coalescer.feed(line, now=0.0):
            out.append(item if isinstance(item, Unparsed) else build_event(item, **build))
    out.extend(build_event(group, **build) for group in coalescer.flush())
    return out
