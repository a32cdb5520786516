"""``nodeaudit estimate``: what a policy's rules cost in syslog bytes, measured on this machine's kernel.

Loads the bundle's rules into the local kernel, listens on the audit netlink socket the way auditd
does, runs a sample workload (or just watches), sizes every record as audisp-syslog would send it
(estimate.syslog_message) and projects GB/day. The kernel is put back exactly as it was found.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import click

from nodeaudit.cli.common import single_policy
from nodeaudit.cli.params import DATA_FORMATS, FiniteFloat, print_data
from nodeaudit.core import estimate as est
from nodeaudit.core import presets as presets_mod
from nodeaudit.core.bundle import render_bundle
from nodeaudit.core.policy import NodeAuditPolicy
from nodeaudit.hostaudit.lock import KERNEL_AUDIT_LOCK
from nodeaudit.hostaudit.netlink import EstimateError, KernelAuditSession, Record

EPILOG = """\b
Examples:
  # 1,000 execs of /bin/true under the policy's rules, 50 nodes, priced
  sudo nodeaudit estimate examples/procmon.yaml --nodes 50 --price-per-gb 2.50
\b
  # your own workload (records attributed to the command and its children)
  sudo nodeaudit estimate policy.yaml --workload 'for i in $(seq 100); do ls >/dev/null; done'
\b
  # what this machine itself produces in 60 s under the policy
  sudo nodeaudit estimate policy.yaml --seconds 60 --nodes 50 --json
\b
Needs root, auditctl (package auditd / audit) and no running audit daemon: the rules are loaded
into the kernel for the sample and removed afterwards (enabled flag, listener pid, rate/backlog
settings and other tools' rules are left as they were). Bytes are the syslog messages
audisp-syslog sends (header + record + ENRICHED fields); GB = 10^9 bytes. There is no --price
default: prices differ by region, tier and commitment (see docs/cost.md).
Exit status: 0 measured, 1 could not measure (not root, no kernel audit, another audit
daemon, a rule refused), 3 measured but the kernel state could not be fully restored.
"""

_HEADER = re.compile(r"audit\(([0-9]+)\.([0-9]+):([0-9]+)\):")
_PID = re.compile(r"(?:^| )pid=([0-9]+)")
_PPID = re.compile(r"(?:^| )ppid=([0-9]+)")
_SYSCALL = re.compile(r"(?:^| )syscall=([0-9]+)")
_EXECVE_NUMBERS = {"59", "11"}  # execve on x86_64 / i386
_SUCCESS = " success=yes "


@functools.lru_cache(maxsize=4096)
def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@functools.lru_cache(maxsize=4096)
def _group(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


@dataclass
class Measured:
    sample: est.Sample
    workload: str
    records: list[tuple[Record, int]]
    """Every record in the window with its syslog size."""
    container_bytes_per_exec: float | None = None
    """JSON form: bytes per exec when the process runs in a pod (attribution included)."""


def record_size(record: Record, facility: str, priority: str) -> int:
    return est.syslog_message_size(est.type_name(record.type), record.text, facility=facility,
                                   priority=priority, users=_user, groups=_group)


def attribute(records: Sequence[Record], roots: set[int], follow_children: bool) -> tuple[set[str], int]:
    """Serials of events made by `roots` (and, with follow_children, their descendants' execs).

    Returns the serials and the number of successful execve events among them (a shell's PATH
    search also makes failed execve attempts: their records count, as cost of the real execs)."""
    tree = set(roots)
    serials: set[str] = set()
    execs = 0
    syscalls = sorted((r for r in records if r.type == 1300), key=lambda r: _serial(r.text))
    for rec in syscalls:
        pid = _int(_PID, rec.text)
        ppid = _int(_PPID, rec.text)
        if pid in tree or (follow_children and ppid in tree):
            tree.add(pid)
            serials.add(_serial(rec.text))
            m = _SYSCALL.search(rec.text)
            if m and m.group(1) in _EXECVE_NUMBERS and _SUCCESS in rec.text:
                execs += 1
    return serials, execs


def _serial(text: str) -> str:
    m = _HEADER.match(text)
    return m.group(3) if m else ""


def _int(pattern: re.Pattern[str], text: str) -> int:
    m = pattern.search(text)
    return int(m.group(1)) if m else -1


def _in_window(record: Record, start_wall: float, end_wall: float) -> bool:
    m = _HEADER.match(record.text)
    if not m:
        return False
    ts = int(m.group(1)) + int(m.group(2)) / 1000
    return start_wall - 0.01 <= ts <= end_wall + 0.01


def measure(policy: NodeAuditPolicy, *, execs: int | None = None, command: str | None = None,
            seconds: float | None = None, program: str = "/bin/true",
            lock_path: str | None = KERNEL_AUDIT_LOCK, auditctl: str = "auditctl") -> tuple[Measured, list[str]]:
    """Sample the kernel under the policy's rules. Returns the measurement and restore problems."""
    bundle = render_bundle(policy)
    rules = [(r.text, r.listing) for r in bundle.rules if r.kind != "control" and r.listing is not None]
    spec = policy.spec.auditd
    control = {k: v for k, v in (("rate_limit", spec.rate_limit), ("backlog_limit", spec.backlog_limit),
                                 ("backlog_wait_time", spec.backlog_wait_time)) if v is not None}
    syslog = policy.spec.syslog
    session = KernelAuditSession(rules=rules, control=control, lock_path=lock_path, auditctl=auditctl)
    records: list[Record] = []
    roots: set[int] = set()
    with session:
        sock = session.sock
        assert sock is not None
        sock.receive(time.monotonic() + 0.2)  # the enable's CONFIG_CHANGE and anything queued
        lost_before = sock.status()["lost"]
        start_wall, start = time.time(), time.monotonic()
        if execs:
            env = {"PATH": "/usr/bin:/bin"}
            for i in range(execs):
                pid = os.posix_spawn(program, [program], env)
                os.waitpid(pid, 0)
                roots.add(pid)
                if i % 100 == 99:
                    records += sock.drain()  # what is queued: the kernel never waits on a full socket
            label = f"{execs:,} execs of {program}"
        elif command:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL)
            roots.add(proc.pid)
            while proc.poll() is None:
                records += sock.receive(time.monotonic() + 0.05)
            label = f"workload `{command}` (exit {proc.returncode})"
        else:
            assert seconds
            records += sock.receive(start + seconds)
            label = f"observing this machine for {seconds:g} s"
        end_wall, elapsed = time.time(), time.monotonic() - start
        records += sock.receive(time.monotonic() + 0.5)  # trailing records of events in the window
        lost = sock.status()["lost"] - lost_before
    problems = session.problems
    records = [r for r in records if _in_window(r, start_wall, end_wall)]
    json_format = syslog.enabled and syslog.format == "json"
    if json_format:
        sizes, container_sizes = json_sizes(records, policy)
    else:
        sizes = [record_size(r, syslog.facility, syslog.priority) for r in records]
    serials, seen_execs = attribute(records, roots, follow_children=bool(command)) if roots else (set(), 0)
    mine = [i for i, r in enumerate(records) if _serial(r.text) in serials]
    n_execs = execs or (seen_execs if command else 0)
    # In the JSON form a message is an event: only an event's first record carries its size.
    messages = sum(1 for size in sizes if size) if json_format else len(records)
    sample = est.Sample(
        seconds=max(elapsed, 1e-3), records=messages, bytes=sum(sizes),
        execs=n_execs, exec_records=sum(1 for i in mine if sizes[i] or not json_format) if n_execs else 0,
        exec_bytes=sum(sizes[i] for i in mine) if n_execs else 0, lost=max(lost, 0),
        types=Counter(est.type_name(r.type) for r in records))
    measured = Measured(sample, label, list(zip(records, sizes, strict=True)))
    if json_format and n_execs:
        measured.container_bytes_per_exec = sum(container_sizes[i] for i in mine) / n_execs
    return measured, problems


def json_sizes(records: Sequence[Record], policy: NodeAuditPolicy) -> tuple[list[int], list[int]]:
    """Per record: the size of its event's one JSON message on the event's first record, 0 on the
    others; as a host process and as a container's (with est.EXAMPLE_CONTAINER)."""
    syslog = policy.spec.syslog
    pairs = [(est.type_name(r.type), r.text) for r in records]
    excluded = presets_mod.VOLUMES[policy.spec.volume].excluded_msgtypes
    host, pod = (est.json_event_sizes(pairs, excluded_types=excluded, facility=syslog.facility,
                                      priority=syslog.priority, container=container)
                 for container in (None, est.EXAMPLE_CONTAINER))
    first: set[str] = set()
    out_host, out_pod = [], []
    for record in records:
        serial = _serial(record.text)
        if serial in first or not serial:
            out_host.append(0)
            out_pod.append(0)
            continue
        first.add(serial)
        out_host.append(host.get(int(serial), 0))
        out_pod.append(pod.get(int(serial), 0))
    return out_host, out_pod


@click.command("estimate", epilog=EPILOG)
@click.argument("file", metavar="POLICY.yaml")
@click.option("--policy", "policy_name", help="Policy to use when FILE holds several.")
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True, help="Nodes in the cluster.")
@click.option("--execs", type=click.IntRange(min=1, max=1_000_000),
              help="Sample workload: this many execs of /bin/true (default 1,000 when no other workload).")
@click.option("--workload", "command", metavar="CMD", help="Sample workload: a shell command (sh -c).")
@click.option("--seconds", type=FiniteFloat(min=0.1, max=3600),
              help="No workload: observe what this machine produces for this long.")
@click.option("--exec-rate", "exec_rates", multiple=True, type=FiniteFloat(min=0),
              help="Execs per second on a node, for the projection of a workload sample (repeatable; "
                   "default 1, 10 and 100).")
@click.option("--price-per-gb", type=FiniteFloat(min=0),
              help="Your Log Analytics ingestion price per GB, in your currency (default: print GB only).")
@click.option("-o", "--output", "output", type=DATA_FORMATS, default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The same as -o json.")
def estimate(file: str, policy_name: str | None, nodes: int, execs: int | None, command: str | None,
             seconds: float | None, exec_rates: tuple[float, ...], price_per_gb: float | None,
             output: str, as_json: bool) -> None:
    """Measure the records and syslog bytes a policy produces on this machine and project GB/day."""
    if sum(x is not None for x in (execs, command, seconds)) > 1:
        raise click.UsageError("give one of --execs, --workload, --seconds")
    if execs is None and command is None and seconds is None:
        execs = 1000

    policy = single_policy(file, policy_name)
    try:
        measured, problems = measure(policy, execs=execs, command=command, seconds=seconds)
    except EstimateError as e:
        click.echo(f"nodeaudit estimate: {e}", err=True)
        sys.exit(1)
    rows = est.project(measured.sample, nodes=nodes, exec_rates=exec_rates or est.DEFAULT_EXEC_RATES,
                       price_per_gb=price_per_gb)
    json_format = policy.spec.syslog.enabled and policy.spec.syslog.format == "json"
    sender = ("the nodeaudit dispatcher sends them: one JSON message per event" if json_format
              else "audisp-syslog sends them")
    data = est.report_dict(policy.name, policy.spec.volume, measured.sample, rows, measured.workload,
                           f"the audit netlink socket (records sized as {sender})")
    data["format"] = "json" if json_format else "raw"
    if measured.container_bytes_per_exec is not None:
        data["sample"]["bytesPerContainerExec"] = round(measured.container_bytes_per_exec, 1)
    data["restoreProblems"] = problems
    try:  # JSON has no NaN or Infinity: a projection that holds one is refused, not printed
        print_data("json" if as_json else output, data, est.format_report(data) if output == "text" else "")
    except ValueError as e:
        click.echo(f"nodeaudit estimate: the projection is not finite ({e})", err=True)
        sys.exit(1)
    if problems:
        click.echo("nodeaudit estimate: kernel audit not fully restored: " + "; ".join(problems), err=True)
        sys.exit(3)
