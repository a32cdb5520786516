"""What a policy costs in Log Analytics: syslog message sizes and GB/day projections.

Pure: no kernel, no I/O. The edge (`cli_estimate.py`, `auditnl.py`) samples the kernel's records
for a policy's rules; this module turns records into the bytes audisp-syslog sends for them and
projects rates to GB/day per node and per cluster.

The syslog message audisp-syslog (audit 3.x, `format = string`) writes to /dev/log for one record:

    <86>Nov 26 15:27:16 audispd: type=SYSCALL msg=audit(1795706836.643:22061): arch=c000003e ... \
        ARCH=x86_64 SYSCALL=execve AUID="unset" UID="root" ...\\n

`<PRI>` (facility * 8 + severity), a 15-character timestamp and a space, the tag `audispd: `, then
auditd's text of the record: `type=<NAME> msg=` + the kernel's text, and (log_format = ENRICHED,
the upstream and Debian/Ubuntu default) the interpreted values of uid/gid, arch and syscall fields
appended in upper case, and a newline. Verified byte for byte against auditd 3.0.9 by the host
tests. The monitoring agent stores the message in the Syslog table's SyslogMessage column with a
few fixed columns more; Log Analytics bills the stored size, so the figures here are the part
that grows with auditing (see docs/cost.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodeaudit.core import records as records_mod
from nodeaudit.core.rules.names import MSG_TYPES
from nodeaudit.core.rules.syscalls import I386, X86_64

GB = 10**9  # decimal gigabyte
SECONDS_PER_DAY = 86_400
SYSLOG_TAG = "audispd"
TIMESTAMP_WIDTH = 15  # "%h %e %T": "Nov 26 15:27:16"

FACILITIES: Mapping[str, int] = {
    "LOG_KERN": 0, "LOG_USER": 1, "LOG_MAIL": 2, "LOG_DAEMON": 3, "LOG_AUTH": 4, "LOG_SYSLOG": 5,
    "LOG_LPR": 6, "LOG_NEWS": 7, "LOG_UUCP": 8, "LOG_CRON": 9, "LOG_AUTHPRIV": 10, "LOG_FTP": 11,
    **{f"LOG_LOCAL{i}": 16 + i for i in range(8)},
}
PRIORITIES: Mapping[str, int] = {
    "LOG_EMERG": 0, "LOG_ALERT": 1, "LOG_CRIT": 2, "LOG_ERR": 3, "LOG_WARNING": 4, "LOG_NOTICE": 5,
    "LOG_INFO": 6, "LOG_DEBUG": 7,
}
TYPE_NAMES: Mapping[int, str] = {number: name for name, number in MSG_TYPES.items()}

# Fields auparse interprets as user / group ids in ENRICHED mode (auditd 3.0.9, the record types an
# execve, watch or syscall rule produces).
_UID_FIELDS = frozenset({"auid", "uid", "euid", "suid", "fsuid", "ouid", "oauid", "iuid", "obj_uid",
                         "inode_uid", "sauid"})
_GID_FIELDS = frozenset({"gid", "egid", "sgid", "fsgid", "ogid", "igid", "obj_gid", "inode_gid", "new_gid"})
_ARCHES: Mapping[str, tuple[str, Mapping[str, int]]] = {
    "c000003e": ("x86_64", X86_64),
    "40000003": ("i386", I386),
}
_SYSCALL_NAMES: Mapping[str, Mapping[int, str]] = {
    arch: {number: name for name, number in table.items()} for arch, (_, table) in _ARCHES.items()
}
UNSET_ID = 4294967295
_FIELD = re.compile(r"([a-z_0-9]+)=(\S*)")


def type_name(number: int) -> str:
    """auditd's name for a record type number; `UNKNOWN[n]` as auditd prints unknown ones."""
    return TYPE_NAMES.get(number, f"UNKNOWN[{number}]")


def syslog_pri(facility: str = "LOG_AUTHPRIV", priority: str = "LOG_INFO") -> int:
    return FACILITIES[facility] * 8 + PRIORITIES[priority]


def syslog_header_length(facility: str = "LOG_AUTHPRIV", priority: str = "LOG_INFO") -> int:
    """Bytes before the record text: `<PRI>`, timestamp, space, `audispd: `."""
    return len(f"<{syslog_pri(facility, priority)}>") + TIMESTAMP_WIDTH + 1 + len(SYSLOG_TAG) + 2


def _id_name(value: str, lookup: Callable[[int], str | None]) -> str:
    try:
        number = int(value)
    except ValueError:
        return value
    if number == UNSET_ID or number == -1:
        return "unset"
    name = lookup(number)
    return name if name is not None else f"unknown({number})"


def enrichment(text: str, users: Callable[[int], str | None] = lambda _: None,
               groups: Callable[[int], str | None] = lambda _: None) -> str:
    """The interpreted fields auditd's ENRICHED format appends to a record (without a leading space).

    `text` is the kernel's text after `audit(...): `. `users`/`groups` resolve ids to names on the
    node (None: unknown).
    """
    out: list[str] = []
    arch = None
    for name, value in _FIELD.findall(text):
        if name == "arch" and value in _ARCHES:
            arch = value
            out.append(f"ARCH={_ARCHES[value][0]}")
        elif name == "syscall" and arch is not None:
            try:
                number = int(value)
            except ValueError:
                continue
            out.append(f"SYSCALL={_SYSCALL_NAMES[arch].get(number, f'unknown-syscall({number})')}")
        elif name in _UID_FIELDS:
            out.append(f'{name.upper()}="{_id_name(value, users)}"')
        elif name in _GID_FIELDS:
            out.append(f'{name.upper()}="{_id_name(value, groups)}"')
    return " ".join(out)


def syslog_message(record_type: str, text: str, *, timestamp: str = "Jan  1 00:00:00",
                   facility: str = "LOG_AUTHPRIV", priority: str = "LOG_INFO", enriched: bool = True,
                   users: Callable[[int], str | None] = lambda _: None,
                   groups: Callable[[int], str | None] = lambda _: None) -> str:
    """The datagram audisp-syslog sends for one kernel record.

    `text` is the record as the kernel sends it on the audit netlink socket:
    `audit(<sec>.<ms>:<serial>): <fields>`.
    """
    text = text.rstrip()  # auditd drops the kernel's trailing space (an EOE record has no fields)
    body = f"type={record_type} msg={text}"
    if enriched:
        _, _, fields = text.partition("):")
        extra = enrichment(fields, users, groups)
        if extra:
            body += " " + extra
    return f"<{syslog_pri(facility, priority)}>{timestamp} {SYSLOG_TAG}: {body}\n"


def syslog_message_size(record_type: str, text: str, **kwargs: Any) -> int:
    return len(syslog_message(record_type, text, **kwargs).encode())


# An attribution as the dispatcher adds it to a container's event, with names of typical AKS length
# (a node running no pods, such as an estimate machine, attributes its processes to the host).
EXAMPLE_CONTAINER: Mapping[str, str] = {
    "id": "3f8a1c2e9b7d4f60a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718",
    "name": "web", "pod": "web-7d4b9c6f5-x2x9q", "namespace": "shop",
    "podUid": "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d", "image": "myregistry.azurecr.io/shop/web:1.4.2",
}


def json_event_sizes(kernel_records: Sequence[tuple[str, str]], *, excluded_types: Sequence[str] = (),
                     facility: str = "LOG_AUTHPRIV", priority: str = "LOG_INFO",
                     container: Mapping[str, str] | None = None) -> dict[int, int]:
    """serial → bytes of the one datagram the nodeaudit dispatcher sends for that event
    (syslog.format json), from (record type name, kernel text `audit(...): fields`) pairs.

    The event is built by the dispatcher's own parser (core/records.py) and attributed to
    `container` (None: a host process)."""
    lines = [f"type={kind} msg={text.rstrip()}" for kind, text in kernel_records]
    pri = syslog_pri(facility, priority)
    sizes: dict[int, int] = {}
    for item in records_mod.events(lines, excluded_types=excluded_types):
        if isinstance(item, records_mod.Unparsed):
            continue
        event = dict(item)
        if event.get("pid") is not None:
            event["container"] = dict(container) if container else None
        sizes[int(event["serial"])] = len(records_mod.syslog_datagram(pri, records_mod.json_message(event)))
    return sizes


# ------------------------------------------------------------------------------------------------
# Samples and projections


@dataclass(frozen=True)
class Sample:
    """What one measurement window saw.

    `records`/`bytes` count everything the kernel sent in the window (the whole machine);
    `execs`, `exec_records`, `exec_bytes` the part attributed to the sample workload (0 when the
    machine was only observed).
    """

    seconds: float
    records: int
    bytes: int
    execs: int = 0
    exec_records: int = 0
    exec_bytes: int = 0
    lost: int = 0
    types: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError("a sample needs a positive duration")
        if min(self.records, self.bytes, self.execs, self.exec_records, self.exec_bytes) < 0:
            raise ValueError("counts cannot be negative")
        if self.exec_records > self.records or self.exec_bytes > self.bytes:
            raise ValueError("the workload's share cannot exceed the window's total")

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds

    @property
    def bytes_per_record(self) -> float:
        return self.bytes / self.records if self.records else 0.0

    @property
    def records_per_exec(self) -> float | None:
        return self.exec_records / self.execs if self.execs else None

    @property
    def bytes_per_exec(self) -> float | None:
        return self.exec_bytes / self.execs if self.execs else None

    @property
    def background_records(self) -> int:
        return self.records - self.exec_records

    @property
    def background_bytes_per_second(self) -> float:
        return (self.bytes - self.exec_bytes) / self.seconds


def gb_per_day(bytes_per_second: float) -> float:
    return bytes_per_second * SECONDS_PER_DAY / GB


@dataclass(frozen=True)
class Projection:
    label: str
    bytes_per_second: float
    records_per_second: float
    nodes: int
    price_per_gb: float | None = None

    @property
    def gb_per_day_node(self) -> float:
        return gb_per_day(self.bytes_per_second)

    @property
    def gb_per_day_cluster(self) -> float:
        return self.gb_per_day_node * self.nodes

    @property
    def cost_per_day_cluster(self) -> float | None:
        return None if self.price_per_gb is None else self.gb_per_day_cluster * self.price_per_gb

    @property
    def cost_per_30_days_cluster(self) -> float | None:
        day = self.cost_per_day_cluster
        return None if day is None else day * 30

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "recordsPerSecond": round(self.records_per_second, 3),
            "bytesPerSecond": round(self.bytes_per_second, 1),
            "gbPerDayPerNode": round(self.gb_per_day_node, 6),
            "nodes": self.nodes,
            "gbPerDayCluster": round(self.gb_per_day_cluster, 6),
            "costPerDayCluster": None if self.cost_per_day_cluster is None else round(self.cost_per_day_cluster, 4),
            "costPer30DaysCluster": None if self.cost_per_30_days_cluster is None
            else round(self.cost_per_30_days_cluster, 2),
        }


DEFAULT_EXEC_RATES = (1.0, 10.0, 100.0)


def project(sample: Sample, nodes: int = 1, exec_rates: Sequence[float] = DEFAULT_EXEC_RATES,
            price_per_gb: float | None = None) -> list[Projection]:
    """GB/day rows for a sample.

    Observed only (no workload): one row at the observed rate, which is what this machine would
    ship. With a workload, the window's rate is the synthetic workload's, not a node's: one row per
    exec rate, each `rate x bytes-per-exec + the background rate seen beside the workload`.
    """
    if nodes < 1:
        raise ValueError("nodes must be at least 1")
    if price_per_gb is not None and price_per_gb < 0:
        raise ValueError("price per GB cannot be negative")
    if not sample.execs:
        return [Projection("observed", sample.bytes_per_second, sample.records_per_second, nodes, price_per_gb)]
    bg_bps = sample.background_bytes_per_second
    bg_rps = sample.background_records / sample.seconds
    rows = []
    for rate in exec_rates:
        if rate < 0:
            raise ValueError("exec rates cannot be negative")
        rows.append(Projection(
            f"{rate:g} execs/s + background",
            rate * (sample.bytes_per_exec or 0.0) + bg_bps,
            rate * (sample.records_per_exec or 0.0) + bg_rps,
            nodes, price_per_gb))
    return rows


def report_dict(policy: str, volume: str, sample: Sample, rows: Sequence[Projection],
                workload: str, method: str) -> dict[str, Any]:
    return {
        "policy": policy,
        "volume": volume,
        "method": method,
        "workload": workload,
        "gbUnit": "1e9 bytes",
        "sample": {
            "seconds": round(sample.seconds, 3),
            "records": sample.records,
            "bytes": sample.bytes,
            "recordsPerSecond": round(sample.records_per_second, 3),
            "bytesPerRecord": round(sample.bytes_per_record, 1),
            "execs": sample.execs,
            "recordsPerExec": None if sample.records_per_exec is None else round(sample.records_per_exec, 3),
            "bytesPerExec": None if sample.bytes_per_exec is None else round(sample.bytes_per_exec, 1),
            "backgroundRecords": sample.background_records,
            "lost": sample.lost,
            "types": dict(sorted(sample.types.items())),
        },
        "projections": [row.as_dict() for row in rows],
    }


def format_report(data: Mapping[str, Any]) -> str:
    s = data["sample"]
    lines = [
        f"policy {data['policy']} (volume {data['volume']}), {data['workload']}, "
        f"{s['seconds']:.2f} s via {data['method']}",
        f"  records       {s['records']:,} ({s['recordsPerSecond']:,.1f}/s), {s['bytes']:,} bytes, "
        f"{s['bytesPerRecord']:,.1f} bytes/record",
    ]
    if s["execs"]:
        lines.append(f"  per exec      {s['recordsPerExec']:.2f} records, {s['bytesPerExec']:,.0f} bytes "
                     f"({s['execs']:,} execs attributed)")
        lines.append(f"  background    {s['backgroundRecords']:,} records from the rest of this machine")
        if s.get("bytesPerContainerExec") is not None:
            lines.append(f"  in a pod      {s['bytesPerContainerExec']:,.0f} bytes per exec with the container "
                         "attribution (typical AKS names)")
    if s["types"]:
        lines.append("  record types  " + ", ".join(f"{k} {v:,}" for k, v in s["types"].items()))
    if s["lost"]:
        lines.append(f"  LOST          {s['lost']:,} records dropped by the kernel during the sample")
    rows = data["projections"]
    nodes = rows[0]["nodes"] if rows else 1
    priced = any(r["costPerDayCluster"] is not None for r in rows)
    sender = ("the nodeaudit dispatcher sends them, one message per event" if data.get("format") == "json"
              else "audisp-syslog sends them")
    lines.append(f"projection (syslog bytes as {sender}; GB = 10^9 bytes; "
                 f"{nodes} node{'s' if nodes != 1 else ''}):")
    head = f"  {'rate':<28} {'records/s':>10} {'GB/day/node':>12} {'GB/day x' + str(nodes):>14}"
    if priced:
        head += f" {'cost/day':>10} {'cost/30d':>11}"
    lines.append(head)
    for r in rows:
        line = (f"  {r['label']:<28} {r['recordsPerSecond']:>10,.1f} {r['gbPerDayPerNode']:>12,.4f}"
                f" {r['gbPerDayCluster']:>14,.3f}")
        if priced:
            line += f" {r['costPerDayCluster']:>10,.2f} {r['costPer30DaysCluster']:>11,.2f}"
        lines.append(line)
    return "\n".join(lines)
