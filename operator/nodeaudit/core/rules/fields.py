"""Per-field checks for `-F name<op>value` in audit rules, and how `auditctl -l` prints each field.

Why a module of its own: every audit field has its own value syntax, its own operators, its own
lists and its own printed form (verified against auditctl 3.0.9 and the kernel on this machine:
`auid!=unset` prints `auid!=-1`, `a1=255` prints `a1=0xFF`, `exit=-13` prints `exit=-EACCES`,
`filetype=file` prints `filetype=32768`). The grammar in rules.py only strings fields together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodeaudit.core.rules.names import ERRNO_NAMES, FIELDS, MSG_TYPES


class FieldError(ValueError):
    """A field that auditctl or the kernel would refuse; rules.py turns it into a RuleError."""


# auditctl looks for two-character operators first, then one-character ones (libaudit.c).
OPERATORS = ("!=", ">=", "<=", "&=", "=", ">", "<", "&")
EQUALITY = frozenset({"=", "!="})

UID_FIELDS = frozenset({"uid", "euid", "suid", "fsuid", "auid", "obj_uid"})
GID_FIELDS = frozenset({"gid", "egid", "sgid", "fsgid", "obj_gid"})
PLAIN_NUMBER_FIELDS = frozenset({"pid", "ppid", "pers", "devmajor", "devminor", "inode", "saddr_fam"})
ARG_FIELDS = frozenset({"a0", "a1", "a2", "a3"})
LABEL_FIELDS = frozenset(
    {"subj_user", "subj_role", "subj_type", "subj_sen", "subj_clr"}
    | {"obj_user", "obj_role", "obj_type", "obj_lev_low", "obj_lev_high"}
)
PATH_FIELDS = frozenset({"path", "dir", "exe"})

# Fields the kernel evaluates only at syscall exit (libaudit returns "only on exit filter list").
EXIT_ONLY = frozenset(
    {"exit", "success", "path", "dir", "perm", "filetype", "devmajor", "devminor", "inode", "ppid"}
    | {"obj_user", "obj_role", "obj_type", "obj_lev_low", "obj_lev_high", "obj_uid", "obj_gid"}
    | ARG_FIELDS
)
# The exclude list takes credentials, pid, msgtype, SELinux subject and exe (kernel >= 4.x).
EXCLUDE_FIELDS = frozenset({"pid", "uid", "gid", "auid", "msgtype", "exe", "sessionid"}) | {
    f for f in LABEL_FIELDS if f.startswith("subj_")
}

# S_IF* values from <sys/stat.h>, the numbers auditctl stores and prints for filetype.
FILE_TYPES = {
    "file": 0o100000,
    "dir": 0o040000,
    "socket": 0o140000,
    "link": 0o120000,
    "character": 0o020000,
    "block": 0o060000,
    "fifo": 0o010000,
}
# lib/fstypetab.h: the file systems a `filesystem` list rule can name.
FS_TYPES = frozenset({"debugfs", "tracefs"})
ARCHES = {"b64": "b64", "x86_64": "b64", "b32": "b32", "i386": "b32", "i686": "b32"}

# AUDIT_MAX_KEY_LEN in the kernel and libaudit: auditctl 3.0.9 accepts the 35-40 byte keys public
# rule sets use (the MITRE ATT&CK technique names of Neo23x0/auditd, bfuzzy/auditd-attack).
KEY_MAX_BYTES = 256
PATH_MAX = 4096
UINT32 = 0xFFFFFFFF

# No leading zeros: auditctl reads numbers with strtoul(v, NULL, 0), so "010" would mean 8.
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)\Z")
_SIGNED_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)\Z")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+\Z")
_OCTAL = re.compile(r"0[0-7]+\Z")
_KEY = re.compile(r"[A-Za-z0-9_.:+@/-]+\Z")
_LABEL = re.compile(r"[A-Za-z0-9_.:,-]+\Z")
_ERRNO = re.compile(r"-?E[A-Z0-9]+\Z")
_ERRNO_BY_NAME = {name: number for number, name in ERRNO_NAMES.items()}


@dataclass(frozen=True)
class Field:
    """One `-F name<op>value` as written (after normalization) and as `auditctl -l` prints it."""

    name: str
    op: str
    value: str
    listing: str

    @property
    def text(self) -> str:
        return f"-F {self.name}{self.op}{self.value}"


def split_field(pair: str) -> tuple[str, str, str]:
    """Split `name<op>value` the way libaudit does: the first operator found, longest first."""
    for op in OPERATORS:
        name, found, value = pair.partition(op)
        if found:
            if not name:
                raise FieldError(f'-F "{pair}" has no field name before "{op}"')
            if not value:
                raise FieldError(f'-F "{pair}" has no value after "{op}"')
            return name, op, value
    raise FieldError(f'-F "{pair}" has no operator (one of {", ".join(OPERATORS)})')


def canonical_name(name: str) -> str:
    """The field's name as auditctl prints it; refuses names no audit version knows."""
    if name == "loginuid":
        return "auid"
    if name == "key":
        return name
    if name not in FIELDS or name == "field_compare":
        raise FieldError(f'unknown field "{name}"')
    return name


def check_key(key: str) -> str:
    if not _KEY.match(key):
        raise FieldError(f'key "{key}" may contain only letters, digits and _ . : + @ / -')
    if len(key.encode()) > KEY_MAX_BYTES:
        raise FieldError(f'key "{key}" is {len(key.encode())} bytes; audit keys are at most {KEY_MAX_BYTES}')
    return key


def check_absolute_path(field: str, path: str) -> None:
    """Absolute, no `.`/`..`/empty components: the kernel matches paths as plain strings."""
    if not path.startswith("/"):
        raise FieldError(f'{field} "{path}" must be an absolute path')
    if any(c.isspace() for c in path):
        raise FieldError(f'{field} "{path}" contains whitespace, which an audit rule line cannot carry')
    if len(path) > PATH_MAX:
        raise FieldError(f"{field} is longer than {PATH_MAX} bytes")
    parts = path.strip("/").split("/")
    if path != "/" and any(part in ("", ".", "..") for part in parts):
        raise FieldError(f'{field} "{path}" must be a normalized path (no "//", "." or ".." parts)')


def _to_int32(number: int) -> int:
    """auditctl prints most values as a signed 32-bit decimal (`unset` = 4294967295 prints -1)."""
    number &= UINT32
    return number - (1 << 32) if number & 0x80000000 else number


def _bounded(field: str, text: str, number: int) -> int:
    if not -(1 << 31) <= number <= UINT32:
        raise FieldError(f'{field} value "{text}" does not fit in 32 bits')
    return number


def _uid(field: str, value: str) -> tuple[str, str]:
    if value == "unset":
        return value, "-1"
    if not _SIGNED_DECIMAL.match(value):
        raise FieldError(
            f'{field} value "{value}" must be a decimal number or "unset" '
            "(user names resolve differently on each node)"
        )
    return value, str(_to_int32(_bounded(field, value, int(value))))


def _plain_number(field: str, value: str, signed_ok: bool = False) -> tuple[str, str]:
    pattern = _SIGNED_DECIMAL if signed_ok else _DECIMAL
    if not pattern.match(value):
        kind = "a decimal number" if signed_ok else "a non-negative decimal number"
        raise FieldError(f'{field} value "{value}" must be {kind}')
    number = _bounded(field, value, int(value))
    if field == "inode":
        return value, str(number & UINT32)
    return value, str(_to_int32(number))


def _value(name: str, value: str) -> tuple[str, str]:
    """Return (value as written to the rules file, value as `auditctl -l` prints it)."""
    if name in UID_FIELDS:
        return _uid(name, value)
    if name in GID_FIELDS:
        if not _DECIMAL.match(value):
            raise FieldError(
                f'{name} value "{value}" must be a decimal number (group names resolve differently on each node)'
            )
        return value, str(_to_int32(_bounded(name, value, int(value))))
    if name == "sessionid":
        return ("unset", "-1") if value == "unset" else _plain_number(name, value, signed_ok=True)
    if name in PLAIN_NUMBER_FIELDS:
        return _plain_number(name, value)
    if name == "success":
        truth = {"1": "1", "yes": "1", "true": "1", "0": "0", "no": "0", "false": "0"}.get(value.lower())
        if truth is None:
            raise FieldError(f'success value "{value}" must be 1 (yes) or 0 (no)')
        return truth, truth
    if name in ARG_FIELDS:
        # libaudit reads syscall arguments with strtoul(v, NULL, 0): 0x is hex and a leading 0 is
        # octal, which the open(2) flag masks of the STIG/OSPP rules use (`-F a1&0100` is O_CREAT).
        if _HEX.match(value):
            number = _bounded(name, value, int(value, 16))
        elif _OCTAL.match(value):
            number = _bounded(name, value, int(value, 8))
        elif _SIGNED_DECIMAL.match(value):
            number = _bounded(name, value, int(value))
        else:
            raise FieldError(
                f'{name} value "{value}" must be a decimal, 0x hexadecimal or 0 octal number'
            )
        return value, f"0x{number & UINT32:X}"
    if name == "exit":
        if _SIGNED_DECIMAL.match(value):
            number = _bounded(name, value, int(value))
        elif _ERRNO.match(value):
            errno_name = value.lstrip("-")
            if errno_name not in _ERRNO_BY_NAME:
                raise FieldError(f'exit value "{value}": unknown errno name "{errno_name}"')
            number = -_ERRNO_BY_NAME[errno_name] if value.startswith("-") else _ERRNO_BY_NAME[errno_name]
        else:
            raise FieldError(f'exit value "{value}" must be a number or an errno name such as -EACCES')
        named = ERRNO_NAMES.get(-number) if number < 0 else None
        return value, f"-{named}" if named else str(_to_int32(number))
    if name == "msgtype":
        if _DECIMAL.match(value):
            number = int(value)
            return value, next((n for n, v in MSG_TYPES.items() if v == number), value)
        if value not in MSG_TYPES:
            raise FieldError(f'unknown msgtype "{value}" (record type names are upper case, e.g. PROCTITLE)')
        return value, value
    if name == "perm":
        return _perm(value)
    if name == "filetype":
        if value not in FILE_TYPES:
            raise FieldError(f'filetype "{value}" must be one of {", ".join(FILE_TYPES)}')
        return value, str(FILE_TYPES[value])
    if name == "fstype":
        if value not in FS_TYPES:
            raise FieldError(f'fstype "{value}" must be one of {", ".join(sorted(FS_TYPES))}')
        return value, value
    if name in PATH_FIELDS:
        check_absolute_path(name, value)
        if name == "path" and value.endswith("/"):
            raise FieldError(f'path "{value}" must not end with "/" (use dir= for a directory)')
        if value == "/" and name != "exe":
            raise FieldError(f"{name}=/ is refused by the kernel: it cannot watch the root directory")
        return value, value
    if name in LABEL_FIELDS:
        if not _LABEL.match(value):
            raise FieldError(f'{name} value "{value}" is not an SELinux label part')
        return value, value
    raise FieldError(f'field "{name}" cannot be used with -F')  # pragma: no cover - FIELDS is closed


def _perm(value: str) -> tuple[str, str]:
    letters = value.lower()
    if not letters or any(c not in "rwxa" for c in letters):
        raise FieldError(f'permission "{value}" may contain only r, w, x and a')
    if len(set(letters)) != len(letters):
        raise FieldError(f'permission "{value}" repeats a letter')
    ordered = "".join(c for c in "rwxa" if c in letters)
    return ordered, ordered


def _check_operator(name: str, op: str) -> None:
    if name in {"path", "dir", "exe", "perm", "key", "filetype", "fstype"} and op != "=":
        raise FieldError(f'{name} takes only the "=" operator, not "{op}"')
    if name in LABEL_FIELDS | {"arch", "inode", "msgtype"} and op not in EQUALITY:
        raise FieldError(f'{name} takes only "=" or "!=", not "{op}"')


def _check_list(name: str, action_list: str) -> None:
    if action_list == "exclude" and name not in EXCLUDE_FIELDS:
        raise FieldError(f'field "{name}" cannot be used on the exclude list')
    if name in EXIT_ONLY and action_list != "exit":
        raise FieldError(f'field "{name}" can only be used on the exit list, not "{action_list}"')
    if name == "msgtype" and action_list not in ("exclude", "user"):
        raise FieldError("msgtype can only be used on the exclude or user list")
    if name == "fstype" and action_list != "filesystem":
        raise FieldError("fstype can only be used on the filesystem list")
    if action_list == "filesystem" and name != "fstype":
        raise FieldError(f'field "{name}" cannot be used on the filesystem list (only fstype and keys)')
    if name == "sessionid" and action_list not in ("exit", "exclude", "user"):
        raise FieldError(f"sessionid cannot be used on the {action_list} list")


def parse_field(pair: str, action_list: str) -> Field:
    """Check one `-F` argument (not arch or key: rules.py handles those) for the given list."""
    raw_name, op, raw_value = split_field(pair)
    name = canonical_name(raw_name)
    _check_operator(name, op)
    _check_list(name, action_list)
    value, listed = _value(name, raw_value)
    return Field(
        name=raw_name if raw_name == "loginuid" else name,
        op=op,
        value=value,
        listing=f" -F {name}{op}{listed}",
    )


# -C: inter-field comparisons. The kernel stores one code per pair of fields and auditctl prints the
# pair in this order whichever way round it was written (print_field_cmp in auditctl-listing.c).
COMPARISONS = (
    ("uid", "obj_uid"), ("gid", "obj_gid"), ("euid", "obj_uid"), ("egid", "obj_gid"),
    ("auid", "obj_uid"), ("suid", "obj_uid"), ("sgid", "obj_gid"), ("fsuid", "obj_uid"),
    ("fsgid", "obj_gid"), ("uid", "auid"), ("uid", "euid"), ("uid", "fsuid"), ("uid", "suid"),
    ("auid", "fsuid"), ("auid", "suid"), ("auid", "euid"), ("euid", "suid"), ("euid", "fsuid"),
    ("suid", "fsuid"), ("gid", "egid"), ("gid", "fsgid"), ("gid", "sgid"), ("egid", "fsgid"),
    ("egid", "sgid"), ("sgid", "fsgid"),
)  # fmt: skip


def parse_comparison(pair: str) -> tuple[str, str]:
    """Check one `-C left<op>right`; return (normalized text, listing)."""
    for op in ("!=", "="):
        left, found, right = pair.partition(op)
        if found:
            break
    else:
        raise FieldError(f'-C "{pair}" must compare two fields with "=" or "!="')
    for first, second in COMPARISONS:
        if {left, right} == {first, second}:
            return f"-C {pair}", f" -C {first}{op}{second}"
    raise FieldError(
        f'-C "{pair}" must compare two different uid fields (auid, uid, euid, suid, fsuid, obj_uid) '
        "or two different gid fields (gid, egid, sgid, fsgid, obj_gid)"
    )
