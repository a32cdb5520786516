"""Named rule sets, volume levels and AKS noise filters, and the expansion of a policy into one rule list.

Why: execve auditing is the loudest thing on a Kubernetes node and Log Analytics bills per GB. These
are the choices we ship, each saying what it records and what it drops, written from auditctl(8),
audit.rules(7) and the upstream sample rules (43-module-load.rules, 30-stig.rules). Measured on this
machine's kernel with auditd 3.0.9 and the syslog plugin: the seed's procmon rules send 8 records
(~1,590 bytes) per executed process; `lean` sends 2 (SYSCALL + EXECVE, ~590 bytes).

Order matters on the exit list: the kernel stops at the first matching rule, so `-a never,exit`
rules must come before the `-a always,exit` rules they carve out of. `expand` puts them first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nodeaudit.core import packs as packs_mod
from nodeaudit.core.rules.fields import FieldError, check_absolute_path
from nodeaudit.core.rules.grammar import RuleError, Unsafe, parse_rule


@dataclass(frozen=True)
class Preset:
    """A named rule set: what it records, what it leaves out, and its rules (auditctl syntax)."""

    name: str
    title: str
    description: str
    rules: tuple[str, ...]
    benchmark: str = ""
    """For a compliance pack: the benchmark and version its rules follow (core/packs.py)."""
    requirements: tuple[packs_mod.Requirement, ...] = ()
    """For a compliance pack: its requirements, each with the rules keyed by its id."""

    def expanded(self, containers: bool = False) -> tuple[str, ...]:
        """The rules, with each login-users-only pack rule's container twin when asked."""
        return packs_mod.container_variant(self.rules) if containers and self.requirements else self.rules


@dataclass(frozen=True)
class Volume:
    """Which record types reach syslog: kernel exclude rules for the record types dropped."""

    name: str
    description: str
    excluded_msgtypes: tuple[str, ...]

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(f"-a always,exclude -F msgtype={t}" for t in self.excluded_msgtypes)


@dataclass(frozen=True)
class NoiseExecutable:
    path: str
    why: str


def _both_arches(syscalls: str, tail: str) -> tuple[str, str]:
    return (
        f"-a always,exit -F arch=b64 -S {syscalls} {tail}",
        f"-a always,exit -F arch=b32 -S {syscalls} {tail}",
    )


PRESETS: Mapping[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="procmon",
            title="Process execution",
            description=(
                "Records every execve on the node, 64-bit and 32-bit ABI, with key procmon: who (uid, auid), "
                "what (exe, full command line in EXECVE), parent (ppid) and where (cwd, PATH records "
                "unless the volume drops them). It is the seed's two rules, unchanged. Does not record "
                "execveat (rare outside fexecve) or what a process does after it starts."
            ),
            rules=_both_arches("execve", "-k procmon"),
        ),
        Preset(
            name="identity",
            title="Accounts and privilege",
            description=(
                "Records writes and attribute changes to the account databases (/etc/passwd, shadow, group, "
                "gshadow, /etc/security/opasswd; key identity) and to sudo configuration (/etc/sudoers, "
                "/etc/sudoers.d/; key privilege), and uid/gid changes (setuid, setgid, setre*, setres*, "
                "setfs*) made by logged-in users (auid >= 1000, set), key privilege. Drops reads of these "
                "files and uid changes by daemons that never logged in (auid unset), which fire constantly."
            ),
            rules=(
                "-w /etc/passwd -p wa -k identity",
                "-w /etc/shadow -p wa -k identity",
                "-w /etc/group -p wa -k identity",
                "-w /etc/gshadow -p wa -k identity",
                "-w /etc/security/opasswd -p wa -k identity",
                "-w /etc/sudoers -p wa -k privilege",
                "-w /etc/sudoers.d/ -p wa -k privilege",
                "-a always,exit -F arch=b64 -S setuid,setgid,setreuid,setregid,setresuid,setresgid,setfsuid,setfsgid "
                "-F auid>=1000 -F auid!=unset -k privilege",
                "-a always,exit -F arch=b32 -S setuid32,setgid32,setreuid32,setregid32,setresuid32,setresgid32,"
                "setfsuid32,setfsgid32 -F auid>=1000 -F auid!=unset -k privilege",
            ),
        ),
        Preset(
            name="modules",
            title="Kernel modules",
            description=(
                "Records loading (init_module, finit_module; key module-load) and unloading (delete_module; "
                "key module-unload) of kernel modules on both ABIs, successful or not: a rootkit's usual way "
                "in. Quiet on a running node. Does not record modules built into the kernel or loaded at boot "
                "before auditd starts."
            ),
            rules=(
                *_both_arches("init_module,finit_module", "-k module-load"),
                *_both_arches("delete_module", "-k module-unload"),
            ),
        ),
        *(
            Preset(
                name=pack.name,
                title=pack.title,
                description=(
                    f"Compliance pack: {pack.benchmark}. {len(pack.requirements)} requirements, "
                    f"{len(pack.rules)} rules; each rule's key starts with its requirement id. "
                    "Rules limited to logged-in users (auid>=1000) record nothing a container does: "
                    "set containers: true to add their twins for unset login uids."
                ),
                rules=pack.rules,
                benchmark=pack.benchmark,
                requirements=pack.requirements,
            )
            for pack in packs_mod.PACKS
        ),
    )
}

# Record types per executed process (measured): SYSCALL, EXECVE, CWD, PATH x2, PROCTITLE, EOE, BPRM_FCAPS.
VOLUMES: Mapping[str, Volume] = {
    v.name: v
    for v in (
        Volume(
            name="lean",
            description=(
                "Drops PROCTITLE (the command line again, hex), EOE (end-of-event marker), BPRM_FCAPS "
                "(file capabilities of the new program), PATH and CWD in the kernel. An exec then ships 2 "
                "records (SYSCALL: exe, pid/ppid, uid/auid, key; EXECVE: the arguments), about 590 bytes "
                "instead of 8 records and 1,590 bytes. Loses the working directory and the inode/mode of the "
                "files a syscall touched; watches still record the path in SYSCALL's key but not PATH details."
            ),
            excluded_msgtypes=("PROCTITLE", "EOE", "BPRM_FCAPS", "PATH", "CWD"),
        ),
        Volume(
            name="standard",
            description=(
                "Drops only EOE (the end-of-event marker, which carries nothing once records travel one "
                "syslog line each) and BPRM_FCAPS (file capabilities of a new program, almost always "
                "empty). Keeps who, what and where: SYSCALL, EXECVE, CWD, PATH and PROCTITLE (the command "
                "line of processes caught by file watches and non-exec rules). 6 records per exec."
            ),
            excluded_msgtypes=("EOE", "BPRM_FCAPS"),
        ),
        Volume(
            name="forensic",
            description=(
                "Drops nothing: every record the rules produce reaches syslog, including EOE and BPRM_FCAPS, "
                "as the seed's manual procedure did (8 records, about 1,590 bytes per exec with procmon). "
                "For investigations; combine it with narrow rules."
            ),
            excluded_msgtypes=(),
        ),
    )
}

AKS_NOISE: tuple[NoiseExecutable, ...] = (
    NoiseExecutable(
        "/usr/bin/containerd-shim-runc-v2",
        "containerd starts one shim per pod and the shim re-executes itself to daemonize; every pod start "
        "means several execs that say only 'a pod started' (the API server records that better).",
    ),
    NoiseExecutable(
        "/usr/bin/runc",
        "the shim runs runc for every container create, start, kill, delete and for every exec probe and "
        "`kubectl exec` (runc exec); with exec probes that is several execs per pod every probe period. "
        "Dropping it hides the runc process, not the commands runc starts inside containers, and "
        "`kubectl exec` stays in the API server's audit log.",
    ),
    NoiseExecutable(
        "/usr/bin/crictl",
        "the AKS node health monitor (health-monitor.sh, container-runtime check) runs `crictl pods` on a "
        "timer to see that containerd answers.",
    ),
)
AKS_NOISE_EXECUTABLES: tuple[str, ...] = tuple(n.path for n in AKS_NOISE)


def exclusion_rules(executables: Sequence[str]) -> list[str]:
    """`-a never,exit` rules (b64 and b32, on execve, `-F exe=`) that stop auditing these programs' execs.

    At execve exit the task's exe is already the new program, so `exe=/usr/bin/runc` matches the
    exec *of* runc. The exit list stops at the first matching rule: these rules only work when they
    come before the `-a always,exit` rules (expand() places them there). The executable's directory
    must exist on the node (the kernel refuses the rule otherwise); a missing file is fine.
    """
    out: list[str] = []
    for exe in executables:
        try:
            check_absolute_path("excluded executable", exe)
        except FieldError as err:
            raise RuleError(str(err)) from None
        if exe.endswith("/"):
            raise RuleError(f'excluded executable "{exe}" must be a file, not a directory')
        out += [
            f"-a never,exit -F arch=b64 -S execve -F exe={exe}",
            f"-a never,exit -F arch=b32 -S execve -F exe={exe}",
        ]
    for rule in out:
        parse_rule(rule)  # a path with characters a rule cannot hold fails here, naming it
    return out


def auditd_control_rules(
    rate_limit: int | None = None, backlog_limit: int | None = None, backlog_wait_time: int | None = None
) -> list[str]:
    """Control lines for the kernel's rate limit (records/s, 0 = none), backlog queue and backlog wait.

    Losses show as `lost` in `auditctl -s`; a larger backlog absorbs bursts such as a node drain.
    """
    lines = []
    if backlog_limit is not None:
        lines.append(f"-b {backlog_limit}")
    if rate_limit is not None:
        lines.append(f"-r {rate_limit}")
    if backlog_wait_time is not None:
        lines.append(f"--backlog_wait_time {backlog_wait_time}")
    for line in lines:
        parse_rule(line)
    return lines


def expand(
    presets: Iterable[str] = (),
    rules: Iterable[str] = (),
    volume: str = "standard",
    exclude_executables: Sequence[str] = (),
    aks_noise: bool = False,
    *,
    containers: bool = False,
    rate_limit: int | None = None,
    backlog_limit: int | None = None,
    backlog_wait_time: int | None = None,
    unsafe: Unsafe | None = None,
) -> list[str]:
    """The policy's final rule list, normalized and in load order.

    Order: control lines (-b/-r/--backlog_wait_time/-f, generated then the user's), msgtype excludes
    of the volume, never rules (AKS noise, then the user's excluded executables), the presets in the
    order given, the user's other rules in their order, and -e lines last (so `-e 2`, when allowed,
    locks a complete rule set). Duplicates (same normalized text) are dropped, the first kept.
    Raises RuleError naming the unknown preset or volume, or the rule that is wrong.
    """
    unsafe = unsafe or Unsafe()
    if volume not in VOLUMES:
        raise RuleError(f'unknown volume "{volume}" (one of {", ".join(VOLUMES)})')
    chosen = []
    for name in presets:
        if name not in PRESETS:
            raise RuleError(f'unknown preset "{name}" (one of {", ".join(PRESETS)})')
        chosen.append(PRESETS[name])
    user = [parse_rule(r, unsafe=unsafe) for r in rules]
    user_control = [r.text for r in user if r.kind == "control" and r.option != "-e"]
    enable = [r.text for r in user if r.option == "-e"]
    noise = list(AKS_NOISE_EXECUTABLES) if aks_noise else []
    ordered = [
        *auditd_control_rules(rate_limit, backlog_limit, backlog_wait_time),
        *user_control,
        *VOLUMES[volume].rules,
        *exclusion_rules([*noise, *exclude_executables]),
        *(rule for preset in chosen for rule in preset.expanded(containers)),
        *(r.text for r in user if r.kind != "control"),
        *enable,
    ]
    seen: set[str] = set()
    out = []
    for line in ordered:
        text = parse_rule(line, unsafe=unsafe).text
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out
