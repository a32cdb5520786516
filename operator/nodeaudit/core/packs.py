"""Compliance packs: the audit rules of four public benchmarks, each rule keyed by its requirement.

Why: an auditor asks "show me requirement 10.2.5.c on every node"; the answer is an `auditctl -l`
line whose key starts with `10.2.5.c-`, as audit-userspace's 30-pci-dss-v31.rules names them, and
`nodeaudit report` counts the keys in force per node. Rules are taken from the public rule files
in tests/data/real-rules/ (audit-userspace 3.0.9, the version on Debian 12 and close to Ubuntu
22.04's 3.0.7) and from the benchmarks' own rule texts, kept to syscalls auditctl 3.0.x knows and
to paths whose parent directory exists on every AKS node image (Ubuntu 22.04/24.04, Azure Linux):
the kernel refuses a watch whose parent is missing.

The benchmarks followed, and what of them is not a rule here:
- pci-dss: PCI DSS v3.1 requirement 10.2 as audit-userspace's 30-pci-dss-v31.rules implements it
  (10.2.1 needs a site-specific path; 10.2.4/10.2.5.a are PAM's records).
- stig: DISA Canonical Ubuntu 22.04 LTS STIG (rule versions UBTU-22-654xxx, V2R3); not here:
  UBTU-22-654095 ssh-keysign (its directory differs between distros).
- ospp: Protection Profile for General Purpose Operating Systems v4.2, as audit-userspace's
  30-ospp-v42*.rules split it into object-event classes (FAU_GEN.1); the requirement id is the
  class (`OSPP-1-create-failed` is 30-ospp-v42-1-create-failed.rules).
- cis: CIS Ubuntu Linux 22.04 LTS Benchmark v1.0.0 section 4.1.3 (its numbering as in
  ComplianceAsCode's ubuntu2204 cis profiles); not here: 4.1.3.20 (`-e 2`, which locks the rules
  until reboot and so forbids every later policy update) and 4.1.3.21 (a manual check).

Containers: processes in pods (and `kubectl exec` sessions) never logged in, so their login uid is
unset (4294967295) and the benchmarks' `-F auid>=1000 -F auid!=unset` filters record nothing they
do. `container_variant` adds, after each such rule, its twin with `-F auid=unset`; the policy's
`containers: true` switches it on (cost: docs/cost.md).
"""

from __future__ import annotations

from dataclasses import dataclass

_USER = "-F auid>=1000 -F auid!=unset"
# The auid filters a login-users-only rule may carry, as the public rule files write them.
_USER_FILTERS = ("-F auid>=1000", "-F auid>=500", "-F auid!=unset", "-F auid!=-1", "-F auid!=4294967295")


@dataclass(frozen=True)
class Requirement:
    """One requirement of a benchmark and the rules that implement it (keys start with its id)."""

    id: str
    title: str
    rules: tuple[str, ...]


def _both(b64: str, tail: str, b32: str | None = None) -> tuple[str, str]:
    return (f"-a always,exit -F arch=b64 -S {b64} {tail}", f"-a always,exit -F arch=b32 -S {b32 or b64} {tail}")


def _exe(path: str, key: str) -> str:
    return f"-a always,exit -F path={path} -F perm=x {_USER} -k {key}"


def _req(rid: str, title: str, topic: str, *parts: str | tuple[str, ...]) -> Requirement:
    """A requirement whose rules' `{k}` placeholder is the key `<id>-<topic>`."""
    key = f"{rid}-{topic}"
    rules: list[str] = []
    for part in parts:
        rules += [part] if isinstance(part, str) else list(part)
    return Requirement(rid, title, tuple(r.replace("{k}", key) for r in rules))


def _watches(paths: tuple[str, ...], perms: str = "wa") -> tuple[str, ...]:
    return tuple(f"-w {p} -p {perms} -k {{k}}" for p in paths)


_ACCOUNTS = ("/etc/group", "/etc/passwd", "/etc/gshadow", "/etc/shadow", "/etc/security/opasswd")
_TIME = (
    *_both("adjtimex,settimeofday", "-k {k}", "adjtimex,settimeofday,stime"),
    *_both("clock_settime", "-F a0=0x0 -k {k}"),
    "-w /etc/localtime -p wa -k {k}",
)
_CHMOD = "chmod,fchmod,fchmodat"
_CHOWN = "chown,fchown,lchown,fchownat"
_XATTR = "setxattr,lsetxattr,fsetxattr,removexattr,lremovexattr,fremovexattr"
_OPEN = "open,truncate,ftruncate,creat,openat,open_by_handle_at"
_DELETE = "unlink,unlinkat,rename,renameat"
_MODULES = (*_both("init_module,finit_module", "-k {k}"), *_both("delete_module", "-k {k}"))


def _access_denied(syscalls: str) -> tuple[str, ...]:
    return (*_both(syscalls, f"-F exit=-EACCES {_USER} -k {{k}}"), *_both(syscalls, f"-F exit=-EPERM {_USER} -k {{k}}"))


PCI_DSS = (
    _req("10.2.2", "Administrative actions: privilege-escalation configuration", "priv-config-changes",
         "-a always,exit -F path=/etc/sudoers -F perm=wa -k {k}", "-w /etc/sudoers.d/ -p wa -k {k}"),
    _req("10.2.3", "Access to all audit trails", "access-audit-trail",
         f"-a always,exit -F dir=/var/log/audit/ -F perm=r {_USER} -k {{k}}",
         *(f"-a always,exit -F path=/usr/sbin/{t} -F perm=x -k {{k}}"
           for t in ("ausearch", "aureport", "aulast", "aulastlogin", "auvirt"))),
    _req("10.2.5.b", "All elevation of privileges (su, sudo, setuid programs)", "elevated-privs",
         *_both("setuid", "-F a0=0 -F exe=/usr/bin/su -k {k}"),
         *_both("setresuid", "-F a0=0 -F exe=/usr/bin/sudo -k {k}"),
         *_both("execve", "-C uid!=euid -F euid=0 -k {k}")),
    _req("10.2.5.c", "All changes, additions or deletions to any account", "accounts",
         *(f"-a always,exit -F path={p} -F perm=wa -k {{k}}" for p in _ACCOUNTS)),
    _req("10.4.2.b", "Time data is protected", "time-change", _TIME),
    _req("10.5.5", "File-integrity monitoring of the audit logs", "modification-audit",
         "-a always,exit -F dir=/var/log/audit/ -F perm=wa -k {k}"),
)

STIG = (
    *(_req(rid, f"Account changes: {path}", "usergroup", f"-w {path} -p wa -k {{k}}")
      for rid, path in (("UBTU-22-654145", "/etc/passwd"), ("UBTU-22-654130", "/etc/group"),
                        ("UBTU-22-654150", "/etc/shadow"), ("UBTU-22-654135", "/etc/gshadow"),
                        ("UBTU-22-654140", "/etc/security/opasswd"))),
    *(_req(rid, f"Use of {path.rsplit('/', 1)[1]}", "priv_cmd", _exe(path, "{k}"))
      for rid, path in (
          ("UBTU-22-654100", "/usr/bin/su"), ("UBTU-22-654030", "/usr/bin/chfn"),
          ("UBTU-22-654065", "/usr/bin/mount"), ("UBTU-22-654115", "/usr/bin/umount"),
          ("UBTU-22-654090", "/usr/bin/ssh-agent"), ("UBTU-22-654105", "/usr/bin/sudo"),
          ("UBTU-22-654110", "/usr/bin/sudoedit"), ("UBTU-22-654035", "/usr/bin/chsh"),
          ("UBTU-22-654070", "/usr/bin/newgrp"), ("UBTU-22-654025", "/usr/bin/chcon"),
          ("UBTU-22-654010", "/usr/sbin/apparmor_parser"), ("UBTU-22-654085", "/usr/bin/setfacl"),
          ("UBTU-22-654015", "/usr/bin/chacl"), ("UBTU-22-654080", "/usr/bin/passwd"),
          ("UBTU-22-654120", "/usr/sbin/unix_update"), ("UBTU-22-654050", "/usr/bin/gpasswd"),
          ("UBTU-22-654020", "/usr/bin/chage"), ("UBTU-22-654125", "/usr/sbin/usermod"),
          ("UBTU-22-654040", "/usr/bin/crontab"), ("UBTU-22-654075", "/usr/sbin/pam_timestamp_check"),
          ("UBTU-22-654060", "/usr/sbin/modprobe"), ("UBTU-22-654055", "/usr/bin/kmod"),
          ("UBTU-22-654045", "/usr/sbin/fdisk"))),
    _req("UBTU-22-654180", "setxattr and removexattr system calls", "perm_mod",
         *_both(_XATTR, f"{_USER} -k {{k}}"), *_both(_XATTR, "-F auid=0 -k {k}")),
    _req("UBTU-22-654160", "chown, fchown, fchownat and lchown system calls", "perm_chng",
         *_both(_CHOWN, f"{_USER} -k {{k}}", "chown,fchown,lchown,fchownat")),
    _req("UBTU-22-654155", "chmod, fchmod and fchmodat system calls", "perm_chng", *_both(_CHMOD, f"{_USER} -k {{k}}")),
    _req("UBTU-22-654165", "Unsuccessful creat, open, openat, open_by_handle_at, truncate, ftruncate", "perm_access",
         _access_denied(_OPEN)),
    _req("UBTU-22-654175", "init_module and finit_module system calls", "module_chng",
         *_both("init_module,finit_module", f"{_USER} -k {{k}}")),
    _req("UBTU-22-654170", "delete_module system call", "module_chng", *_both("delete_module", f"{_USER} -k {{k}}")),
    _req("UBTU-22-654230", "Execution of privileged functions (setuid to root)", "execpriv",
         *_both("execve", "-C uid!=euid -F euid=0 -k {k}"), *_both("execve", "-C gid!=egid -F egid=0 -k {k}")),
    _req("UBTU-22-654235", "Privileged activities: the sudo log", "maintenance", "-w /var/log/sudo.log -p wa -k {k}"),
    _req("UBTU-22-654185", "unlink, unlinkat, rename, renameat and rmdir system calls", "delete",
         *_both(f"{_DELETE},rmdir", f"{_USER} -k {{k}}")),
    _req("UBTU-22-654200", "The /var/log/wtmp file", "logins", "-w /var/log/wtmp -p wa -k {k}"),
    _req("UBTU-22-654205", "The /var/run/utmp file", "logins", "-w /var/run/utmp -p wa -k {k}"),
    _req("UBTU-22-654195", "The /var/log/btmp file", "logins", "-w /var/log/btmp -p wa -k {k}"),
    _req("UBTU-22-654210", "The faillog file", "logins", "-w /var/log/faillog -p wa -k {k}"),
    _req("UBTU-22-654215", "The lastlog file", "logins", "-w /var/log/lastlog -p wa -k {k}"),
)

OSPP = (
    _req("OSPP-1-create-failed", "Unsuccessful file creation (FAU_GEN.1)", "unsuccessful",
         *_both("openat,open_by_handle_at", f"-F a2&0100 -F exit=-EACCES {_USER} -k {{k}}"),
         *_both("open", f"-F a1&0100 -F exit=-EACCES {_USER} -k {{k}}"),
         *_both("creat", f"-F exit=-EACCES {_USER} -k {{k}}"),
         *_both("openat,open_by_handle_at", f"-F a2&0100 -F exit=-EPERM {_USER} -k {{k}}"),
         *_both("open", f"-F a1&0100 -F exit=-EPERM {_USER} -k {{k}}"),
         *_both("creat", f"-F exit=-EPERM {_USER} -k {{k}}")),
    _req("OSPP-1-create-success", "Successful file creation (FAU_GEN.1)", "successful",
         *_both("openat,open_by_handle_at", f"-F a2&0100 -F success=1 {_USER} -k {{k}}"),
         *_both("open", f"-F a1&0100 -F success=1 {_USER} -k {{k}}"),
         *_both("creat", f"-F success=1 {_USER} -k {{k}}")),
    _req("OSPP-2-modify-failed", "Unsuccessful file modification (FAU_GEN.1)", "unsuccessful",
         *_both("openat,open_by_handle_at", f"-F a2&01003 -F exit=-EACCES {_USER} -k {{k}}"),
         *_both("open", f"-F a1&01003 -F exit=-EACCES {_USER} -k {{k}}"),
         *_both("truncate,ftruncate", f"-F exit=-EACCES {_USER} -k {{k}}"),
         *_both("openat,open_by_handle_at", f"-F a2&01003 -F exit=-EPERM {_USER} -k {{k}}"),
         *_both("open", f"-F a1&01003 -F exit=-EPERM {_USER} -k {{k}}"),
         *_both("truncate,ftruncate", f"-F exit=-EPERM {_USER} -k {{k}}")),
    _req("OSPP-2-modify-success", "Successful file modification (FAU_GEN.1)", "successful",
         *_both("openat,open_by_handle_at", f"-F a2&01003 -F success=1 {_USER} -k {{k}}"),
         *_both("open", f"-F a1&01003 -F success=1 {_USER} -k {{k}}"),
         *_both("truncate,ftruncate", f"-F success=1 {_USER} -k {{k}}")),
    _req("OSPP-3-access-failed", "Unsuccessful file access (FAU_GEN.1)", "unsuccessful",
         _access_denied("open,openat,openat2,open_by_handle_at")),
    _req("OSPP-4-delete-failed", "Unsuccessful file deletion (FAU_GEN.1)", "unsuccessful", _access_denied(_DELETE)),
    _req("OSPP-4-delete-success", "Successful file deletion (FAU_GEN.1)", "successful",
         *_both(_DELETE, f"-F success=1 {_USER} -k {{k}}")),
    _req("OSPP-5-perm-change-failed", "Unsuccessful permission change (FAU_GEN.1)", "unsuccessful",
         _access_denied(f"{_CHMOD},{_XATTR}")),
    _req("OSPP-5-perm-change-success", "Successful permission change (FAU_GEN.1)", "successful",
         *_both(f"{_CHMOD},{_XATTR}", f"-F success=1 {_USER} -k {{k}}")),
    _req("OSPP-6-owner-change-failed", "Unsuccessful ownership change (FAU_GEN.1)", "unsuccessful",
         _access_denied(_CHOWN)),
    _req("OSPP-6-owner-change-success", "Successful ownership change (FAU_GEN.1)", "successful",
         *_both(_CHOWN, f"-F success=1 {_USER} -k {{k}}")),
    _req("OSPP-user-modify", "Direct edits of the account databases", "accounts",
         *(f"-a always,exit -F path={p} -F perm=wa {_USER} -k {{k}}" for p in _ACCOUNTS[:4])),
    _req("OSPP-special-config-changes", "Setuid programs that change system configuration", "setuid",
         *(_exe(p, "{k}") for p in ("/usr/sbin/unix_chkpwd", "/usr/bin/mount", "/usr/bin/newgrp",
                                     "/usr/bin/newuidmap", "/usr/bin/gpasswd", "/usr/bin/newgidmap",
                                     "/usr/bin/umount", "/usr/bin/passwd", "/usr/bin/crontab", "/usr/bin/at")),
         "-a always,exit -F path=/etc/sudoers -F perm=wa -k {k}", "-w /etc/sudoers.d/ -p wa -k {k}"),
    _req("OSPP-access-audit-trail", "Audit log access", "read", f"-a always,exit -F dir=/var/log/audit/ -F perm=r {_USER} -k {{k}}"),
    _req("OSPP-session", "Attempts to alter session initiation information", "utmp",
         *(f"-a always,exit -F path={p} -F perm=wa {_USER} -k {{k}}" for p in ("/var/run/utmp", "/var/log/btmp", "/var/log/wtmp"))),
    _req("OSPP-module-load", "Kernel module loading and unloading (43-module-load.rules)", "modules", _MODULES),
)

CIS = (
    _req("CIS-4.1.3.1", "Changes to system administration scope (sudoers)", "scope",
         "-w /etc/sudoers -p wa -k {k}", "-w /etc/sudoers.d/ -p wa -k {k}"),
    _req("CIS-4.1.3.2", "Actions as another user are always logged", "user_emulation",
         *_both("execve", "-C euid!=uid -F auid!=unset -k {k}")),
    _req("CIS-4.1.3.3", "Events that modify the sudo log file", "sudo_log_file", "-w /var/log/sudo.log -p wa -k {k}"),
    _req("CIS-4.1.3.4", "Events that modify date and time information", "time-change", _TIME),
    _req("CIS-4.1.3.5", "Events that modify the system's network environment", "system-locale",
         *_both("sethostname,setdomainname", "-k {k}"),
         *_watches(("/etc/issue", "/etc/issue.net", "/etc/hosts", "/etc/hostname", "/etc/netplan/",
                    "/etc/networks", "/etc/network/"))),
    _req("CIS-4.1.3.6", "Use of privileged commands", "privileged",
         *(_exe(p, "{k}") for p in ("/usr/bin/su", "/usr/bin/sudo", "/usr/bin/mount", "/usr/bin/umount",
                                     "/usr/bin/passwd", "/usr/bin/gpasswd", "/usr/bin/newgrp", "/usr/bin/chsh",
                                     "/usr/bin/chfn", "/usr/bin/chage", "/usr/bin/crontab",
                                     "/usr/sbin/unix_chkpwd"))),
    _req("CIS-4.1.3.7", "Unsuccessful file access attempts", "access", _access_denied(_OPEN)),
    _req("CIS-4.1.3.8", "Events that modify user/group information", "identity", *_watches(_ACCOUNTS)),
    _req("CIS-4.1.3.9", "Discretionary access control permission modification", "perm_mod",
         *_both(_CHMOD, f"{_USER} -k {{k}}"), *_both(_CHOWN, f"{_USER} -k {{k}}"), *_both(_XATTR, f"{_USER} -k {{k}}")),
    _req("CIS-4.1.3.10", "Successful file system mounts", "mounts", *_both("mount", f"{_USER} -k {{k}}")),
    _req("CIS-4.1.3.11", "Session initiation information", "session",
         *_watches(("/var/run/utmp", "/var/log/wtmp", "/var/log/btmp"))),
    _req("CIS-4.1.3.12", "Login and logout events", "logins", *_watches(("/var/log/lastlog", "/var/run/faillock/"))),
    _req("CIS-4.1.3.13", "File deletion events by users", "delete", *_both(_DELETE, f"{_USER} -k {{k}}")),
    _req("CIS-4.1.3.14", "Events that modify the Mandatory Access Controls (AppArmor)", "MAC-policy",
         *_watches(("/etc/apparmor/", "/etc/apparmor.d/"))),
    _req("CIS-4.1.3.15", "Use of chcon", "perm_chng", _exe("/usr/bin/chcon", "{k}")),
    _req("CIS-4.1.3.16", "Use of setfacl", "perm_chng", _exe("/usr/bin/setfacl", "{k}")),
    _req("CIS-4.1.3.17", "Use of chacl", "perm_chng", _exe("/usr/bin/chacl", "{k}")),
    _req("CIS-4.1.3.18", "Use of usermod", "usermod", _exe("/usr/sbin/usermod", "{k}")),
    _req("CIS-4.1.3.19", "Kernel module loading, unloading and modification", "kernel_modules",
         *_both("init_module,finit_module,delete_module", f"{_USER} -k {{k}}"), _exe("/usr/bin/kmod", "{k}")),
)


@dataclass(frozen=True)
class Pack:
    name: str
    title: str
    benchmark: str
    requirements: tuple[Requirement, ...]

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(rule for req in self.requirements for rule in req.rules)


PACKS = (
    Pack("stig", "DISA STIG audit rules", "DISA Canonical Ubuntu 22.04 LTS STIG (UBTU-22-654xxx, V2R3)", STIG),
    Pack("pci-dss", "PCI DSS audit trail", "PCI DSS v3.1 requirement 10 (audit-userspace 30-pci-dss-v31.rules)",
         PCI_DSS),
    Pack("ospp", "OSPP audit events",
         "Protection Profile for General Purpose Operating Systems v4.2 (audit-userspace 30-ospp-v42*.rules)", OSPP),
    Pack("cis", "CIS auditd rules", "CIS Ubuntu Linux 22.04 LTS Benchmark v1.0.0, section 4.1.3", CIS),
)


def container_variant(rules: tuple[str, ...]) -> tuple[str, ...]:
    """Each rule limited to logged-in users, followed by its twin for processes whose login uid is
    unset (every container process). Rules without such a filter are kept as they are."""
    out: list[str] = []
    for rule in rules:
        out.append(rule)
        tokens = rule.split()
        pairs = [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False) if a == "-F"]
        if not any(p.startswith(("-F auid>=1000", "-F auid>=500")) for p in pairs):
            continue
        twin = rule
        first = True
        for pattern in _USER_FILTERS:
            if f" {pattern} " in f" {twin} ":
                twin = f" {twin} ".replace(f" {pattern} ", " -F auid=unset " if first else " ", 1).strip()
                first = False
        out.append(twin)
    return tuple(out)


def requirement_of(key: str, pack: Pack) -> Requirement | None:
    """The requirement a rule key names (the longest id it starts with)."""
    found = [r for r in pack.requirements if key.startswith(r.id + "-")]
    return max(found, key=lambda r: len(r.id)) if found else None
