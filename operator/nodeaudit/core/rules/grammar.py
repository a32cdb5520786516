"""The audit-rule grammar: one auditctl rule line in, a checked AuditRule (with its `auditctl -l` form) out.

Why: rules come from a policy and run as root on every node; a bad line there means a node whose
`augenrules --load` fails. Everything auditctl or the kernel would refuse is refused here, without
a kernel, with a message naming the exact token. `AuditRule.listing` is the line `auditctl -l`
prints for the rule (forms verified against auditctl 3.0.9 on a real kernel; see tests/core/test_rules.py);
the bundle verifies a node by finding each listing line in `auditctl -l`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from nodeaudit.core.rules.fields import (
    ARCHES,
    KEY_MAX_BYTES,
    Field,
    FieldError,
    check_absolute_path,
    check_key,
    parse_comparison,
    parse_field,
    split_field,
)
from nodeaudit.core.rules.syscalls import I386, X86_64

__all__ = ["AuditRule", "RuleError", "Unsafe", "parse_rule", "SYSCALL_TABLES"]


class RuleError(ValueError):
    """A rule auditctl or the kernel would refuse, or one this operator refuses for safety."""


@dataclass(frozen=True)
class Unsafe:
    """Control lines refused unless the policy opts in: each can take a node out of service."""

    allow_immutable: bool = False  # -e 2: rules locked until reboot; no later policy can apply
    allow_panic: bool = False  # -f 2: kernel panic when audit records are lost
    allow_delete_all: bool = False  # -D: also deletes rules other tools loaded
    allow_task_never: bool = False  # -a never,task without fields: no syscall records for any new process
    allow_loginuid_immutable: bool = False  # --loginuid-immutable: locked until reboot
    allow_audit_off: bool = False  # -e 0: kernel auditing off for every policy on the node


@dataclass(frozen=True)
class AuditRule:
    """One checked rule.

    kind is "syscall" for every -a/-A list rule (exit, exclude, user, task, filesystem), "watch" for
    -w, "control" for -b/-r/--backlog_wait_time/-f/-e/-D/--loginuid-immutable and the loader
    directives -c/-i. listing is None for control lines: they set kernel status (see `auditctl -s`)
    or steer `auditctl -R`, and are not listed by `auditctl -l`.
    """

    text: str
    kind: str
    listing: str | None
    keys: tuple[str, ...] = ()
    list: str | None = None
    action: str | None = None
    prepend: bool = False
    arch: str | None = None
    syscalls: tuple[str, ...] = ()
    fields: tuple[Field, ...] = ()
    path: str | None = None
    perms: str | None = None
    option: str | None = None
    value: int | None = None


SYSCALL_TABLES: Mapping[str, Mapping[str, int]] = {"b64": X86_64, "b32": I386}
_SYSCALL_NAMES: Mapping[str, Mapping[int, str]] = {
    arch: {number: name for name, number in table.items()} for arch, table in SYSCALL_TABLES.items()
}
# Bits in the kernel's syscall mask (AUDIT_BITMASK_SIZE 64 words of 32 bits).
SYSCALL_LIMIT = 64 * 32
MAX_FIELDS = 63  # AUDIT_MAX_FIELDS - 1: libaudit refuses the 64th

LISTS = ("exit", "exclude", "user", "task", "filesystem", "io_uring")
ACTIONS = ("always", "never")
# Printable ASCII a rule can need: names, numbers, paths, operators (= ! < > &), lists (,).
# Everything else (quotes, $, ;, |, backslash, *, #, tabs, control and non-ASCII characters) is
# refused: auditctl reads the file without a shell, so such characters would end up verbatim in a
# path or key and never match.
_ALLOWED = re.compile(r"[A-Za-z0-9 _./,:=!<>&+@%-]*\Z")
_COUNT = re.compile(r"(0|[1-9][0-9]*)\Z")  # no leading zero: auditctl would read it as octal
# auditctl's short options that take a value (its getopt string); getopt also accepts the value
# attached (`-Fauid>=1000`, `-kfoo`), as public rule files sometimes write it.
_VALUE_OPTIONS = frozenset("CefrbaAdSFmRwWkpq")
_CONTROL_HEADS = ("-b", "-r", "--backlog_wait_time", "-f", "-e", "-D", "--loginuid-immutable", "-c", "-i")


def _refuse_characters(text: str) -> None:
    if _ALLOWED.match(text):
        return
    bad = next(c for c in text if not _ALLOWED.match(c))
    if bad == "\n" or bad == "\r":
        raise RuleError("a rule must be a single line (found a line break)")
    if bad == "\0":
        raise RuleError("NUL character in rule")
    if bad == "#":
        raise RuleError('"#" is not allowed: comments are not rules')
    if bad.isprintable() and bad.isascii():
        raise RuleError(f"character {bad!r} cannot be part of an audit rule")
    raise RuleError(f"character U+{ord(bad):04X} cannot be part of an audit rule")


@dataclass
class _Draft:
    """What a -a/-A rule has collected so far, in the order auditctl stores it."""

    action: str
    filter_list: str
    prepend: bool
    tokens: list[str]
    arch: str | None = None
    arch_token: str | None = None
    syscall_numbers: set[int] = dataclass_field(default_factory=set)
    all_syscalls: bool = False
    has_syscalls: bool = False
    fields: list[Field] = dataclass_field(default_factory=list)
    field_listing: list[str] = dataclass_field(default_factory=list)
    keys: list[str] = dataclass_field(default_factory=list)
    seen_perm: bool = False
    seen_exe: bool = False
    seen_fstype: bool = False
    path_fields: int = 0


def parse_rule(text: str, *, unsafe: Unsafe = Unsafe()) -> AuditRule:
    """Parse exactly one audit rule line; raise RuleError (only) naming what is wrong."""
    if not isinstance(text, str):
        raise RuleError(f"a rule must be a string, not {type(text).__name__}")
    # A policy's rules are parsed by the model, the renderer and the operator on every reconcile:
    # the same few strings again and again, and parsing is pure.
    return _parse_rule_cached(text, unsafe)


@functools.lru_cache(maxsize=8192)
def _parse_rule_cached(text: str, unsafe: Unsafe) -> AuditRule:
    _refuse_characters(text)
    tokens = _split_attached(text.split())
    if not tokens:
        raise RuleError("empty rule")
    head = tokens[0]
    try:
        if head in ("-a", "-A"):
            return _parse_list_rule(tokens, unsafe)
        if head == "-w":
            return _parse_watch(tokens)
        if head in _CONTROL_HEADS:
            return _parse_control(tokens, unsafe)
    except FieldError as err:
        raise RuleError(str(err)) from None
    if head.startswith("-"):
        raise RuleError(f'unknown or unsupported option "{head}" at the start of a rule')
    raise RuleError(
        f'a rule starts with -a, -A, -w or a control option (-b, -r, --backlog_wait_time, -f, -e); got "{head}"'
    )


def _split_attached(tokens: list[str]) -> list[str]:
    """Separate values written onto their option (`-Fauid>=1000` -> `-F`, `auid>=1000`), as getopt does."""
    out: list[str] = []
    expect_value = False
    for token in tokens:
        if expect_value:
            out.append(token)
            expect_value = False
        elif len(token) > 2 and token[0] == "-" and token[1] in _VALUE_OPTIONS:
            out += [token[:2], token[2:]]
        else:
            out.append(token)
            expect_value = (len(token) == 2 and token[0] == "-" and token[1] in _VALUE_OPTIONS) or (
                token == "--backlog_wait_time"
            )
    return out


def _pairs(tokens: list[str], start: int) -> list[tuple[str, str]]:
    """Option/argument pairs after the head; every option here takes exactly one argument."""
    pairs = []
    i = start
    while i < len(tokens):
        option = tokens[i]
        if not option.startswith("-") or option == "-":
            raise RuleError(f'"{option}" is not an option (an argument without -F/-S/-k/... before it?)')
        if i + 1 >= len(tokens):
            raise RuleError(f"option {option} needs a value")
        value = tokens[i + 1]
        if value.startswith("-") and not re.match(r"-[0-9]", value):
            raise RuleError(f'option {option} needs a value, got the option "{value}"')
        pairs.append((option, value))
        i += 2
    return pairs


def _list_action(spec: str) -> tuple[str, str]:
    parts = spec.split(",")
    if len(parts) != 2:
        raise RuleError(f'"{spec}" must be action,list or list,action (e.g. always,exit)')
    first, second = parts
    if first in ACTIONS and second in LISTS:
        return first, second
    if first in LISTS and second in ACTIONS:
        return second, first
    for word in parts:
        if word not in ACTIONS and word not in LISTS:
            raise RuleError(
                f'unknown list or action "{word}" in "{spec}" (actions: always, never; lists: {", ".join(LISTS)})'
            )
    raise RuleError(f'"{spec}" must name one action (always, never) and one list ({", ".join(LISTS)})')


def _parse_list_rule(tokens: list[str], unsafe: Unsafe) -> AuditRule:
    if len(tokens) < 2:
        raise RuleError(f"option {tokens[0]} needs a value")
    action, action_list = _list_action(tokens[1])
    if action_list == "io_uring":
        raise RuleError(
            "the io_uring list is not supported: auditctl 3.0.x (Ubuntu 22.04 nodes, Debian 12) refuses it"
        )
    draft = _Draft(
        action=action,
        filter_list=action_list,
        prepend=tokens[0] == "-A",
        tokens=[tokens[0], f"{action},{action_list}"],
    )
    for option, value in _pairs(tokens, 2):
        if option == "-F":
            _add_field(draft, value)
        elif option == "-S":
            _add_syscalls(draft, value)
        elif option == "-C":
            text, listing = parse_comparison(value)
            draft.tokens.append(text)
            draft.field_listing.append(listing)
            _count_field(draft)
        elif option == "-k":
            _add_key(draft, value, "-k")
        elif option == "-p":
            # auditctl adds -p to any -a rule as the perm field (audit_setup_perms); written as
            # -F perm= here, which every auditctl version reads the same way.
            _add_field(draft, f"perm={value}")
        elif option in ("-a", "-A"):
            raise RuleError(f"only one {option} per rule (found a second list,action)")
        elif option == "-w":
            raise RuleError("-w cannot be used in an -a rule (a watch is its own rule: -w PATH -p PERMS)")
        else:
            raise RuleError(f'unknown or unsupported option "{option}" in an -a rule')
    _check_complete(draft, unsafe)
    return AuditRule(
        text=" ".join(draft.tokens),
        kind="syscall",
        listing=_listing(draft),
        keys=tuple(draft.keys),
        list=action_list,
        action=action,
        prepend=draft.prepend,
        arch=draft.arch,
        syscalls=_syscall_names(draft),
        fields=tuple(draft.fields),
    )


def _count_field(draft: _Draft) -> None:
    if len(draft.field_listing) + (draft.arch is not None) + bool(draft.keys) > MAX_FIELDS:
        raise RuleError(f"too many fields: a rule holds at most {MAX_FIELDS}")


def _add_field(draft: _Draft, pair: str) -> None:
    name, op, value = split_field(pair)
    if name == "key":
        if op != "=":
            raise RuleError(f'key takes only the "=" operator, not "{op}"')
        _add_key(draft, value, "-F key=")
        return
    if name == "arch":
        _add_arch(draft, op, value)
        return
    parsed = parse_field(pair, draft.filter_list)
    if parsed.name == "exe":
        if draft.seen_exe:
            raise RuleError("exe may appear only once in a rule (the kernel refuses a second one)")
        draft.seen_exe = True
    if parsed.name == "perm" and draft.seen_perm:
        raise RuleError("perm is given twice (-p or -F perm=): give one set of permissions")
    if parsed.name in ("path", "dir"):
        draft.path_fields += 1
        if draft.path_fields > 1:
            raise RuleError("a rule may hold only one path= or dir= field")
    draft.seen_perm |= parsed.name == "perm"
    draft.seen_fstype |= parsed.name == "fstype"
    draft.fields.append(parsed)
    draft.field_listing.append(parsed.listing)
    draft.tokens.append(parsed.text)
    _count_field(draft)


def _add_arch(draft: _Draft, op: str, value: str) -> None:
    if draft.arch is not None:
        raise RuleError("arch is given twice (one rule covers one ABI; write a b64 and a b32 rule)")
    if draft.has_syscalls:
        raise RuleError(
            f"-F arch={value} must come before -S (auditctl reads syscall names with the arch's table)"
        )
    if op != "=":
        raise RuleError(f'arch takes only "=" here, not "{op}" (write one rule per ABI)')
    if value not in ARCHES:
        raise RuleError(f'unknown arch "{value}" (one of {", ".join(ARCHES)})')
    if draft.filter_list not in ("exit", "task"):
        raise RuleError(f"arch cannot be used on the {draft.filter_list} list")
    draft.arch = ARCHES[value]
    draft.arch_token = f"-F arch={value}"
    draft.tokens.append(draft.arch_token)


def _add_syscalls(draft: _Draft, spec: str) -> None:
    if draft.filter_list != "exit":
        raise RuleError(
            f"-S cannot be used on the {draft.filter_list} list (syscalls are matched on the exit list)"
        )
    if draft.arch is None and set(spec.split(",")) != {"all"}:
        raise RuleError(
            f"-S {spec} needs -F arch=b64 or -F arch=b32 before it: syscall numbers differ between the "
            "64-bit and 32-bit ABI, so a rule without arch is ambiguous on 64-bit nodes"
        )
    table = SYSCALL_TABLES[draft.arch or "b64"]  # without arch only "all" gets here
    for name in spec.split(","):
        if not name:
            raise RuleError(f'empty syscall name in "-S {spec}"')
        if name == "all":
            draft.all_syscalls = True
        elif _COUNT.match(name):
            number = int(name)
            if number >= SYSCALL_LIMIT:
                raise RuleError(f"syscall number {number} is out of range (0-{SYSCALL_LIMIT - 1})")
            draft.syscall_numbers.add(number)
        elif name in table:
            draft.syscall_numbers.add(table[name])
        else:
            raise RuleError(f'unknown syscall "{name}" for arch {draft.arch}')
    draft.has_syscalls = True
    draft.tokens.append(f"-S {spec}")


def _add_key(draft: _Draft, key: str, how: str) -> None:
    # libaudit counts path= and dir= as watch fields (_audit_permadded), so a key may follow them.
    if draft.filter_list in ("exclude", "user", "task") or not (
        draft.has_syscalls or draft.seen_perm or draft.seen_exe or draft.seen_fstype or draft.path_fields
    ):
        raise RuleError(
            f"{how}{'' if how.endswith('=') else ' '}{key}: a key needs -S, -F perm=, -F path=, -F dir=, "
            "-F exe= or -F fstype= before it (auditctl refuses it otherwise)"
        )
    _append_key(draft.keys, key)
    draft.tokens.append(f"-F key={key}" if how == "-F key=" else f"-k {key}")
    _count_field(draft)


def _append_key(keys: list[str], key: str) -> None:
    """Several keys share one kernel field, joined by a separator byte; the total is limited too."""
    check_key(key)
    keys.append(key)
    joined = sum(len(k.encode()) for k in keys) + len(keys) - 1
    if joined > KEY_MAX_BYTES:
        raise RuleError(
            f"keys {', '.join(keys)} together take {joined} bytes (joined by one byte each); "
            f"audit keys are at most {KEY_MAX_BYTES}"
        )


def _check_complete(draft: _Draft, unsafe: Unsafe) -> None:
    if draft.filter_list == "exclude" and not draft.fields:
        raise RuleError(
            "an exclude rule needs a field (e.g. -F msgtype=PROCTITLE); it would drop every record"
        )
    if draft.filter_list == "filesystem" and not draft.seen_fstype:
        raise RuleError("a filesystem rule needs -F fstype=")
    if (
        draft.filter_list == "exit"
        and not draft.has_syscalls
        and not draft.fields
        and len(draft.field_listing) == 0
    ):
        raise RuleError("an exit rule needs -S or a field; as written it would audit every syscall")
    if (
        draft.filter_list == "task"
        and draft.action == "never"
        and not draft.field_listing
        and not unsafe.allow_task_never
    ):
        raise RuleError(
            "-a never,task without fields turns off syscall auditing for every new process on the node "
            "(every policy's syscall rules stop matching); refused unless spec.unsafe.allowTaskNever"
        )


def _is_watch(draft: _Draft) -> bool:
    """auditctl prints an exit rule as `-w` when it has perm, no arch and only watch-like fields."""
    watch_fields = {"path", "dir", "perm"}
    return (
        draft.filter_list == "exit"
        and draft.arch is None
        and (draft.all_syscalls or not draft.has_syscalls)
        and draft.seen_perm
        and len(draft.field_listing) == len(draft.fields)
        and all(f.name in watch_fields for f in draft.fields)
    )


def _listing(draft: _Draft) -> str:
    keys = "".join(f" -k {k}" for k in draft.keys)
    if _is_watch(draft):
        parts = []
        for f in draft.fields:
            parts.append(f"-w {f.value}" if f.name in ("path", "dir") else f" -p {f.value}")
        return "".join(parts) + keys
    out = f"-a {draft.action},{draft.filter_list}"
    if draft.arch is not None:
        out += f" -F arch={draft.arch}"
    if draft.filter_list == "exit":
        out += (
            " -S " + ",".join(_syscall_names(draft))
            if draft.has_syscalls and not draft.all_syscalls
            else " -S all"
        )
    out += "".join(draft.field_listing)
    return out + "".join(f" -F key={k}" for k in draft.keys)


def _syscall_names(draft: _Draft) -> tuple[str, ...]:
    """Syscalls as auditctl lists them: by number, named from the rule's arch table."""
    if draft.all_syscalls:
        return ("all",)
    names = _SYSCALL_NAMES[draft.arch] if draft.arch else {}
    return tuple(names.get(n, str(n)) for n in sorted(draft.syscall_numbers))


def _parse_watch(tokens: list[str]) -> AuditRule:
    if len(tokens) < 2:
        raise RuleError("option -w needs a path")
    path = tokens[1]
    check_absolute_path("watch path", path)
    # auditctl drops trailing slashes before it looks at the path (audit_setup_watch_name).
    listed_path = path.rstrip("/") or "/"
    if listed_path == "/":
        raise RuleError("-w / is refused by the kernel: it cannot watch the root directory")
    out = ["-w", path]
    perms: str | None = None
    keys: list[str] = []
    for option, value in _pairs(tokens, 2):
        if option == "-p":
            if perms is not None:
                raise RuleError("-p is given twice")
            try:
                perms = parse_field(f"perm={value}", "exit").value
            except FieldError as err:
                raise RuleError(str(err)) from None
            out += ["-p", perms]
        elif option == "-k":
            _append_key(keys, value)
            out += ["-k", value]
        elif option == "-F" and value.startswith("key="):
            # auditctl reads -F key= as -k everywhere (process_keys), watches included.
            _append_key(keys, value.removeprefix("key="))
            out += ["-k", value.removeprefix("key=")]
        elif option == "-w":
            raise RuleError("only one -w per rule")
        elif option == "-F":
            raise RuleError(
                f'a watch (-w) takes only -p, -k and -F key=; got "-F {value}" '
                "(for conditions write -a always,exit -F path=... or -F dir=... with -F perm=)"
            )
        else:
            raise RuleError(f'a watch (-w) takes only -p and -k; got "{option}"')
    listed_perms = perms or "rwxa"  # auditctl's default when -p is missing
    listing = f"-w {listed_path} -p {listed_perms}" + "".join(f" -k {k}" for k in keys)
    return AuditRule(
        text=" ".join(out), kind="watch", listing=listing, keys=tuple(keys), list="exit", action="always",
        path=path, perms=listed_perms,
    )  # fmt: skip


# Upper bounds: backlog and rate are u32 in the kernel; backlog_wait_time is in jiffies and the
# kernel refuses 10 x its default (60*HZ) or more, so 60000 is safe for any HZ >= 100.
_CONTROL_LIMITS = {"-b": 2**31 - 1, "-r": 2**31 - 1, "--backlog_wait_time": 60000}


# Loader directives of `auditctl -R` (and so of augenrules): -c keeps loading past a failing line,
# -i also silences the error. They change nothing in the kernel; apply.sh verifies every rule anyway.
_LOADER_DIRECTIVES = ("-c", "-i")


def _parse_control(tokens: list[str], unsafe: Unsafe) -> AuditRule:
    option = tokens[0]
    if option in _LOADER_DIRECTIVES or option == "--loginuid-immutable":
        if len(tokens) > 1:
            raise RuleError(f"{option} takes no arguments")
        if option == "--loginuid-immutable" and not unsafe.allow_loginuid_immutable:
            raise RuleError(
                "--loginuid-immutable makes every process's login uid unchangeable until reboot "
                "(nodeaudit cannot undo it); refused unless spec.unsafe.allowLoginuidImmutable"
            )
        return AuditRule(text=option, kind="control", listing=None, option=option)
    if option == "-D":
        if len(tokens) > 1:
            raise RuleError("-D takes no arguments here")
        if not unsafe.allow_delete_all:
            raise RuleError(
                "-D deletes every audit rule on the node, including other tools' rules; refused unless allowed"
            )
        return AuditRule(text="-D", kind="control", listing=None, option="-D")
    if len(tokens) != 2:
        raise RuleError(
            f"{option} takes exactly one value" if len(tokens) > 2 else f"option {option} needs a value"
        )
    value = tokens[1]
    if not _COUNT.match(value):
        raise RuleError(
            f'{option} value "{value}" must be a non-negative decimal number without leading zeros'
        )
    number = int(value)
    if option == "-e" and number == 0 and not unsafe.allow_audit_off:
        raise RuleError(
            "-e 0 switches kernel auditing off on the node, for every policy; refused unless "
            "spec.unsafe.allowAuditOff"
        )
    if option in ("-e", "-f"):
        if number == 2:
            if option == "-e" and not unsafe.allow_immutable:
                raise RuleError(
                    "-e 2 locks audit rules until reboot (no later policy can change them); refused unless allowed"
                )
            if option == "-f" and not unsafe.allow_panic:
                raise RuleError("-f 2 panics the kernel when audit records are lost; refused unless allowed")
        elif number not in (0, 1):
            raise RuleError(f"{option} value must be 0 or 1 (2 only when explicitly allowed), not {number}")
    elif number > _CONTROL_LIMITS[option]:
        raise RuleError(f"{option} value {number} is above the maximum {_CONTROL_LIMITS[option]}")
    return AuditRule(text=f"{option} {number}", kind="control", listing=None, option=option, value=number)
