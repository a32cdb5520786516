"""Tests for the audit-rule grammar (nodeaudit.core.rules.grammar): refusals, normalization, `auditctl -l` forms."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeaudit.core.rules.grammar import SYSCALL_TABLES, AuditRule, RuleError, Unsafe, parse_rule

# (rule as written, the line `auditctl -l` printed for it). Captured from auditctl 3.0.9 on this
# machine's kernel (6.18), one rule loaded at a time, under /run/lock/nodeaudit-kernel-audit.lock.
REAL_LISTINGS = [
    (
        "-a always,exit -F arch=b64 -S execve -k procmon",
        "-a always,exit -F arch=b64 -S execve -F key=procmon",
    ),
    (
        "-a exit,always -F arch=b32 -S execve -k procmon",
        "-a always,exit -F arch=b32 -S execve -F key=procmon",
    ),
    (
        "-a always,exit -F arch=x86_64 -S execve -k procmon",
        "-a always,exit -F arch=b64 -S execve -F key=procmon",
    ),
    (
        "-a always,exit -F arch=i386 -S execve -k procmon",
        "-a always,exit -F arch=b32 -S execve -F key=procmon",
    ),
    ("-w /etc/passwd -p wa -k identity", "-w /etc/passwd -p wa -k identity"),
    ("-w /etc/passwd -p aw", "-w /etc/passwd -p wa"),
    ("-w /etc/shadow", "-w /etc/shadow -p rwxa"),
    ("-w /etc/sudoers.d/ -p wa -k actions", "-w /etc/sudoers.d -p wa -k actions"),
    ("-w /etc/audit/ -p wa -k auditconf", "-w /etc/audit -p wa -k auditconf"),
    ("-w /usr/sbin/insmod -p x -k mod", "-w /usr/sbin/insmod -p x -k mod"),
    ("-w /etc/group -p wa -k a -k b", "-w /etc/group -p wa -k a -k b"),
    ("-a always,exit -F dir=/etc/ssh -F perm=wa -k sshd", "-w /etc/ssh -p wa -k sshd"),
    ("-a always,exit -F path=/etc/hosts -F perm=wa -k hosts", "-w /etc/hosts -p wa -k hosts"),
    (
        "-a always,exit -F arch=b64 -S all -F path=/etc/hostname -F perm=wa -k hn",
        "-a always,exit -F arch=b64 -S all -F path=/etc/hostname -F perm=wa -F key=hn",
    ),
    ("-a always,exclude -F msgtype=PROCTITLE", "-a always,exclude -F msgtype=PROCTITLE"),
    ("-a exclude,always -F msgtype=EOE", "-a always,exclude -F msgtype=EOE"),
    (
        "-a never,exit -F arch=b64 -S execve -F exe=/usr/bin/foo",
        "-a never,exit -F arch=b64 -S execve -F exe=/usr/bin/foo",
    ),
    (
        "-a always,exit -F arch=b64 -S openat,truncate -S execve -S 59 -F auid>=1000 -F auid!=unset -k multi",
        "-a always,exit -F arch=b64 -S execve,truncate,openat -F auid>=1000 -F auid!=-1 -F key=multi",
    ),
    (
        "-a always,exit -F arch=b32 -S chmod,fchmod -F exit=-EACCES -F success=0 -k acc",
        "-a always,exit -F arch=b32 -S chmod,fchmod -F exit=-EACCES -F success=0 -F key=acc",
    ),
    (
        "-a always,exit -F arch=b64 -S clock_settime -F a0=0x0 -F a1=255 -F a2&=0x40 -F a3&16 -k t",
        "-a always,exit -F arch=b64 -S clock_settime -F a0=0x0 -F a1=0xFF -F a2&=0x40 -F a3&0x10 -F key=t",
    ),
    (
        "-a always,exit -F arch=b64 -S init_module -k one -k two",
        "-a always,exit -F arch=b64 -S init_module -F key=one -F key=two",
    ),
    (
        "-a always,exit -F arch=b64 -S delete_module -k three -F uid=0",
        "-a always,exit -F arch=b64 -S delete_module -F uid=0 -F key=three",
    ),
    (
        "-a always,exit -F arch=b64 -S finit_module -F key=fk -F gid!=0 -k fk2",
        "-a always,exit -F arch=b64 -S finit_module -F gid!=0 -F key=fk -F key=fk2",
    ),
    (
        "-a always,exit -S all -F exe=/usr/bin/baz -k ex",
        "-a always,exit -S all -F exe=/usr/bin/baz -F key=ex",
    ),
    ("-a always,exit -F exe=/usr/bin/qux -k ex2", "-a always,exit -S all -F exe=/usr/bin/qux -F key=ex2"),
    (
        "-A always,exit -F arch=b64 -S kill -F a1=9 -k prepend",
        "-a always,exit -F arch=b64 -S kill -F a1=0x9 -F key=prepend",
    ),
    ("-a never,task -F uid=12345", "-a never,task -F uid=12345"),
    ("-a always,user -F msgtype=USER_LOGIN -F uid=0", "-a always,user -F msgtype=USER_LOGIN -F uid=0"),
    ("-a never,filesystem -F fstype=debugfs", "-a never,filesystem -F fstype=debugfs"),
    (
        "-a always,exit -F arch=b64 -S setuid -F success=1 -F pid=5 -F ppid=1 -F sessionid=3 -k sess",
        "-a always,exit -F arch=b64 -S setuid -F success=1 -F pid=5 -F ppid=1 -F sessionid=3 -F key=sess",
    ),
    ("-a always,exclude -F exe=/usr/bin/excluded", "-a always,exclude -F exe=/usr/bin/excluded"),
    ("-a always,exclude -F uid=99999 -F msgtype=CWD", "-a always,exclude -F uid=99999 -F msgtype=CWD"),
    (
        "-a always,exit -F arch=b64 -S open -F filetype=file -F inode=12 -F devmajor=8 -k ft",
        "-a always,exit -F arch=b64 -S open -F filetype=32768 -F inode=12 -F devmajor=8 -F key=ft",
    ),
    (
        "-a always,exit -F arch=b64 -S bind -F saddr_fam=10 -k net",
        "-a always,exit -F arch=b64 -S bind -F saddr_fam=10 -F key=net",
    ),
    (
        "-a always,exit -F arch=b64 -S all -F euid=0 -F fsgid<5 -F sgid>3 -F egid<=4 -F fsuid>=0 -F suid=0 "
        "-F pers=0 -F obj_uid=0 -F obj_gid=0 -k misc",
        "-a always,exit -F arch=b64 -S all -F euid=0 -F fsgid<5 -F sgid>3 -F egid<=4 -F fsuid>=0 -F suid=0 "
        "-F pers=0 -F obj_uid=0 -F obj_gid=0 -F key=misc",
    ),
    (
        "-a always,exit -F arch=b64 -S execve -C uid!=euid -k cmp",
        "-a always,exit -F arch=b64 -S execve -C uid!=euid -F key=cmp",
    ),
    (
        "-a always,exit -F arch=b64 -S open -F exit=-13 -k e13",
        "-a always,exit -F arch=b64 -S open -F exit=-EACCES -F key=e13",
    ),
    (
        "-a always,exit -F arch=b64 -S open -F exit=2 -k e2",
        "-a always,exit -F arch=b64 -S open -F exit=2 -F key=e2",
    ),
    ("-a always,exit -F arch=b64 -S 1000 -k bignum", "-a always,exit -F arch=b64 -S 1000 -F key=bignum"),
    (
        "-a always,exit -F arch=b32 -S socketcall -F a0=1 -k sc",
        "-a always,exit -F arch=b32 -S socketcall -F a0=0x1 -F key=sc",
    ),
    (
        "-a always,exit -F arch=b64 -S execve -F key=012345678901234567890123456789a",
        "-a always,exit -F arch=b64 -S execve -F key=012345678901234567890123456789a",
    ),
    (
        "-a always,exit -F arch=b64 -S execve -F dir=/tmp/ -k dirslash",
        "-a always,exit -F arch=b64 -S execve -F dir=/tmp/ -F key=dirslash",
    ),
    (
        "-a always,exit -F arch=b64 -S execve -F perm=wa -k permsys",
        "-a always,exit -F arch=b64 -S execve -F perm=wa -F key=permsys",
    ),
    (
        "-a always,exit -F arch=b64 -S execve -F subj_type=foo_t -k se",
        "-a always,exit -F arch=b64 -S execve -F subj_type=foo_t -F key=se",
    ),
    ("-a always,exit -F arch=b32 -S all -k 32all", "-a always,exit -F arch=b32 -S all -F key=32all"),
    (
        "-a always,exit -F arch=b64 -S execve -S execveat -k both",
        "-a always,exit -F arch=b64 -S execve,execveat -F key=both",
    ),
    # Loaded together from a rules file (lean volume, AKS noise, identity and modules presets).
    (
        "-a always,exit -F arch=b32 -S setuid32,setgid32,setreuid32,setregid32,setresuid32,setresgid32,"
        "setfsuid32,setfsgid32 -F auid>=1000 -F auid!=unset -k privilege",
        "-a always,exit -F arch=b32 -S setreuid32,setregid32,setresuid32,setresgid32,setuid32,setgid32,"
        "setfsuid32,setfsgid32 -F auid>=1000 -F auid!=-1 -F key=privilege",
    ),
]


@pytest.mark.parametrize(("rule", "listing"), REAL_LISTINGS)
def test_listing_is_what_auditctl_printed(rule: str, listing: str) -> None:
    assert parse_rule(rule).listing == listing


@pytest.mark.parametrize(("rule", "listing"), REAL_LISTINGS)
def test_normalized_text_parses_to_the_same_rule(rule: str, listing: str) -> None:
    first = parse_rule(rule)
    again = parse_rule(first.text)
    assert again == first
    assert "  " not in first.text


INVALID = [
    ("", "empty rule"),
    ("   ", "empty rule"),
    ("# procmon", '"#" is not allowed: comments are not rules'),
    ("-a always,exit -F arch=b64 -S execve -k procmon\n-w /etc/passwd", "a rule must be a single line"),
    ("-a always,exit -F arch=b64 -S execve -k proc\0mon", "NUL character in rule"),
    (
        "-a always,exit -F arch=b64 -S execve -k procmon; rm -rf /",
        "character ';' cannot be part of an audit rule",
    ),
    ("-a always,exit -F arch=b64 -S execve -k $(id)", "character '$' cannot be part of an audit rule"),
    ('-a always,exit -F arch=b64 -S execve -k "procmon"', "character '\"' cannot be part of an audit rule"),
    ("-a always,exit -F arch=b64 -S execve -k procmön", "character U+00F6 cannot be part of an audit rule"),
    ("-a always,exit -F arch=b64 -S execve\t-k procmon", "character U+0009 cannot be part of an audit rule"),
    ("-a always,exit -F arch=b64 -S execvee -k procmon", 'unknown syscall "execvee" for arch b64'),
    (
        "-a always,exit -F arch=b32 -S execveat,setuid32,accept4,kexec_file_load",
        'unknown syscall "kexec_file_load" for arch b32',
    ),
    ("-a always,exit -F arch=b64 -S setuid32", 'unknown syscall "setuid32" for arch b64'),
    ("-a always,exit -S execve -k procmon", "-S execve needs -F arch=b64 or -F arch=b32 before it"),
    (
        "-a always,exit -S execve -F arch=b64 -k procmon",
        "-S execve needs -F arch=b64 or -F arch=b32 before it",
    ),
    ("-a always,exit -F arch=b64 -F arch=b32 -S execve", "arch is given twice"),
    ("-a always,exit -F arch=arm64 -S execve", 'unknown arch "arm64"'),
    ("-a always,exit -F arch!=b64 -S execve", 'arch takes only "=" here, not "!="'),
    ("-a always,exit -F arch=b64 -S execve,,open", 'empty syscall name in "-S execve,,open"'),
    ("-a always,exit -F arch=b64 -S 5000", "syscall number 5000 is out of range"),
    ("-a sometimes,exit -F arch=b64 -S execve", 'unknown list or action "sometimes" in "sometimes,exit"'),
    ("-a always,entry -F arch=b64 -S execve", 'unknown list or action "entry" in "always,entry"'),
    ("-a always -F arch=b64 -S execve", '"always" must be action,list or list,action'),
    ("-a always,never -F arch=b64 -S execve", '"always,never" must name one action'),
    ("-a always,io_uring -S openat", "the io_uring list is not supported"),
    ("-a always,exit -F arch=b64 -S execve -k " + "k" * 257, "is 257 bytes; audit keys are at most 256"),
    ("-a always,exit -F arch=b64 -S execve -k " + "a" * 128 + " -k " + "b" * 128, "together take 257 bytes"),
    (
        "-a always,exit -F arch=b64 -k procmon -S execve",
        "a key needs -S, -F perm=, -F path=, -F dir=, -F exe= or -F fstype= before it",
    ),
    ("-a always,exit -F arch=b64 -S execve -F key!=x", 'key takes only the "=" operator, not "!="'),
    ("-a always,exit -F arch=b64 -S execve -k", "option -k needs a value"),
    ("-a always,exit -F arch=b64 -S execve -F", "option -F needs a value"),
    ("-a always,exit -F arch=b64 -S execve -F colour=red", 'unknown field "colour"'),
    ("-a always,exit -F arch=b64 -S execve -F auid", '-F "auid" has no operator'),
    ("-a always,exit -F arch=b64 -S execve -F =5", '-F "=5" has no field name before "="'),
    ("-a always,exit -F arch=b64 -S execve -F uid=", '-F "uid=" has no value after "="'),
    ("-a always,exit -F arch=b64 -S execve -F uid>=", '-F "uid>=" has no value after ">="'),
    (
        "-a always,exit -F arch=b64 -S execve -F uid=root",
        'uid value "root" must be a decimal number or "unset"',
    ),
    ("-a always,exit -F arch=b64 -S execve -F auid>=01000", 'auid value "01000" must be a decimal number'),
    (
        "-a always,exit -F arch=b64 -S execve -F auid=99999999999",
        'auid value "99999999999" does not fit in 32 bits',
    ),
    ("-a always,exit -F arch=b64 -S execve -F gid=-1", 'gid value "-1" must be a decimal number'),
    (
        "-a always,exit -F arch=b64 -S execve -F ppid!=-5",
        'ppid value "-5" must be a non-negative decimal number',
    ),
    (
        "-a always,exit -F arch=b64 -S open -F success=maybe",
        'success value "maybe" must be 1 (yes) or 0 (no)',
    ),
    ("-a always,exit -F arch=b64 -S open -F exit=-EWHAT", 'exit value "-EWHAT": unknown errno name "EWHAT"'),
    (
        "-a always,exit -F arch=b64 -S open -F exit=fail",
        'exit value "fail" must be a number or an errno name',
    ),
    ("-a always,exit -F arch=b64 -S open -F a0=0xZZ", 'a0 value "0xZZ" must be a decimal'),
    (
        "-a always,exit -F arch=b64 -S execve -F msgtype=EXECVE",
        "msgtype can only be used on the exclude or user list",
    ),
    ("-a always,exclude -F msgtype=proctitle", 'unknown msgtype "proctitle"'),
    ("-a always,exclude -F msgtype<PROCTITLE", 'msgtype takes only "=" or "!=", not "<"'),
    ("-a always,exclude -F path=/etc/passwd", 'field "path" cannot be used on the exclude list'),
    ("-a always,exclude -F arch=b64 -S execve", "arch cannot be used on the exclude list"),
    ("-a always,exclude -F msgtype=CWD -k noise", "a key needs -S"),
    ("-a always,exclude", "an exclude rule needs a field"),
    ("-a always,task -F arch=b64 -S execve", "-S cannot be used on the task list"),
    ("-a always,user -F exit=1", 'field "exit" can only be used on the exit list, not "user"'),
    ("-a never,filesystem -F fstype=ext4", 'fstype "ext4" must be one of debugfs, tracefs'),
    ("-a never,filesystem -F uid=0", 'field "uid" cannot be used on the filesystem list'),
    (
        "-a always,exit -F arch=b64 -S open -F fstype=debugfs",
        "fstype can only be used on the filesystem list",
    ),
    ("-a always,exit", "an exit rule needs -S or a field"),
    ("-a never,task", "-a never,task without fields turns off syscall auditing"),
    (
        "-a always,exit -F arch=b64 -S execve -F exe!=/usr/bin/runc",
        'exe takes only the "=" operator, not "!="',
    ),
    (
        "-a always,exit -F arch=b64 -S execve -F exe=usr/bin/runc",
        'exe "usr/bin/runc" must be an absolute path',
    ),
    ("-a always,exit -F arch=b64 -S execve -F exe=/a -F exe=/b", "exe may appear only once"),
    ("-a always,exit -F arch=b64 -S open -F path=/etc/ -F perm=r", 'path "/etc/" must not end with "/"'),
    (
        "-a always,exit -F arch=b64 -S open -F path=/etc/../shadow",
        'must be a normalized path (no "//", "." or ".." parts)',
    ),
    (
        "-a always,exit -F arch=b64 -S open -F path=/a -F dir=/b",
        "a rule may hold only one path= or dir= field",
    ),
    ("-a always,exit -F arch=b64 -S open -F perm=rwz", 'permission "rwz" may contain only r, w, x and a'),
    ("-a always,exit -F arch=b64 -S open -F perm=ww", 'permission "ww" repeats a letter'),
    ("-a always,exit -F arch=b64 -S open -F filetype=pipe", 'filetype "pipe" must be one of'),
    ("-a always,exit -F arch=b64 -S open -C uid!=gid", '-C "uid!=gid" must compare two different uid fields'),
    (
        "-a always,exit -F arch=b64 -S open -C uid<euid",
        '-C "uid<euid" must compare two fields with "=" or "!="',
    ),
    ("-a always,exit -F arch=b64 -S execve -a always,exit", "only one -a per rule"),
    ("-a always,exit -F arch=b64 -S execve -w /etc/passwd", "-w cannot be used in an -a rule"),
    ("-a always,exit -F arch=b64 -S execve -x y", 'unknown or unsupported option "-x" in an -a rule'),
    ("-a always,exit -F arch=b64 -S execve procmon", '"procmon" is not an option'),
    ("-a always,exit -F arch=b64 -S -k", 'option -S needs a value, got the option "-k"'),
    ("-w etc/passwd -p wa", 'watch path "etc/passwd" must be an absolute path'),
    ("-w / -p wa", "-w / is refused by the kernel"),
    ("-w /etc/passwd -p wq", 'permission "wq" may contain only r, w, x and a'),
    ("-w /etc/passwd -p wa -p r", "-p is given twice"),
    ("-w /etc/passwd -p wa -F uid=0", 'a watch (-w) takes only -p, -k and -F key=; got "-F uid=0"'),
    ("-a always,exit -F arch=b64 -S open -F a1&08", 'a1 value "08" must be a decimal, 0x hexadecimal or 0 octal'),
    ("-a always,exit -F path=/etc/shadow -p wa -p r -k x", "perm is given twice"),
    ("-a task,never", "refused unless spec.unsafe.allowTaskNever"),
    ("--loginuid-immutable", "refused unless spec.unsafe.allowLoginuidImmutable"),
    ("-e 0", "refused unless spec.unsafe.allowAuditOff"),
    ("-c 1", "-c takes no arguments"),
    ("-w /etc/passwd -w /etc/shadow", "only one -w per rule"),
    ("-w", "option -w needs a path"),
    ("-e 2", "-e 2 locks audit rules until reboot"),
    ("-f 2", "-f 2 panics the kernel when audit records are lost"),
    ("-D", "-D deletes every audit rule on the node"),
    ("-e 3", "-e value must be 0 or 1"),
    ("-e", "option -e needs a value"),
    ("-b 8192 -r 5", "-b takes exactly one value"),
    ("-b lots", '-b value "lots" must be a non-negative decimal number'),
    ("-b 08192", '-b value "08192" must be a non-negative decimal number without leading zeros'),
    ("--backlog_wait_time 600000", "--backlog_wait_time value 600000 is above the maximum 60000"),
    ("-l", 'unknown or unsupported option "-l"'),
    ("-R /etc/audit/audit.rules", 'unknown or unsupported option "-R"'),
    ("auditctl -a always,exit -F arch=b64 -S execve", "a rule starts with -a, -A, -w or a control option"),
]


@pytest.mark.parametrize(("rule", "message"), INVALID, ids=[f"{i}" for i in range(len(INVALID))])
def test_invalid_rule_is_refused_with_a_precise_message(rule: str, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(rule)
    assert message in str(caught.value)


def test_there_are_at_least_thirty_distinct_invalid_rules() -> None:
    assert len({rule for rule, _ in INVALID}) >= 30


def test_unsafe_control_lines_pass_only_with_their_own_flag() -> None:
    assert parse_rule("-e 2", unsafe=Unsafe(allow_immutable=True)).value == 2
    assert parse_rule("-f 2", unsafe=Unsafe(allow_panic=True)).option == "-f"
    assert parse_rule("-D", unsafe=Unsafe(allow_delete_all=True)).text == "-D"
    with pytest.raises(RuleError, match="-f 2 panics"):
        parse_rule("-f 2", unsafe=Unsafe(allow_immutable=True, allow_delete_all=True))
    with pytest.raises(RuleError, match="-e 2 locks"):
        parse_rule("-e 2", unsafe=Unsafe(allow_panic=True))


@pytest.mark.parametrize(
    "line", ["-b 8192", "-r 0", "--backlog_wait_time 60000", "-f 0", "-f 1", "-e 1", "-c", "-i"]
)
def test_control_lines_have_no_listing(line: str) -> None:
    rule = parse_rule(line)
    assert (rule.kind, rule.listing, rule.text) == ("control", None, line)


def test_rule_attributes_describe_the_rule() -> None:
    rule = parse_rule("-a exit,always  -F arch=b64 -S openat -S execve -F auid>=1000 -k a -F key=b")
    assert rule == AuditRule(
        text="-a always,exit -F arch=b64 -S openat -S execve -F auid>=1000 -k a -F key=b",
        kind="syscall",
        listing="-a always,exit -F arch=b64 -S execve,openat -F auid>=1000 -F key=a -F key=b",
        keys=("a", "b"),
        list="exit",
        action="always",
        arch="b64",
        syscalls=("execve", "openat"),
        fields=rule.fields,
    )
    assert [(f.name, f.op, f.value) for f in rule.fields] == [("auid", ">=", "1000")]
    watch = parse_rule("-w /etc/sudoers.d/ -k privilege")
    assert (watch.kind, watch.path, watch.perms, watch.keys) == (
        "watch",
        "/etc/sudoers.d/",
        "rwxa",
        ("privilege",),
    )


def test_success_yes_is_written_as_1_because_auditctl_refuses_yes() -> None:
    # auditctl 3.0.9 answered "-F value should be number for success" to success=yes.
    rule = parse_rule("-a always,exit -F arch=b64 -S open -F success=yes -k y")
    assert rule.text == "-a always,exit -F arch=b64 -S open -F success=1 -k y"


def test_syscall_numbers_are_named_from_the_rules_arch() -> None:
    assert parse_rule("-a always,exit -F arch=b64 -S 59").listing == "-a always,exit -F arch=b64 -S execve"
    assert parse_rule("-a always,exit -F arch=b32 -S 11").listing == "-a always,exit -F arch=b32 -S execve"
    assert SYSCALL_TABLES["b64"]["execve"] == 59 and SYSCALL_TABLES["b32"]["execve"] == 11


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=400)
@given(st.text())
def test_arbitrary_text_raises_nothing_but_rule_error(text: str) -> None:
    with contextlib.suppress(RuleError):
        parse_rule(text)


_TOKENS = st.sampled_from(
    ["-a", "-A", "-w", "-F", "-S", "-k", "-p", "-C", "-e", "-f", "-b", "-D", "always,exit", "exit,never",
     "always,exclude", "arch=b64", "arch=b32", "execve", "all", "59", "msgtype=CWD", "auid>=1000",
     "auid!=unset", "uid=0", "exe=/usr/bin/runc", "/etc/passwd", "wa", "key=x", "procmon", "2", "1",
     "path=/etc/shadow", "perm=wa", "a0=0x10", "exit=-EPERM", "\n", "\0", "ü", " ", "-"]
)  # fmt: skip


@settings(max_examples=400)
@given(st.lists(_TOKENS, max_size=12).map(" ".join))
def test_rule_like_token_soup_raises_nothing_but_rule_error(text: str) -> None:
    try:
        rule = parse_rule(text)
    except RuleError:
        return
    assert parse_rule(rule.text) == rule


_B64 = sorted(SYSCALL_TABLES["b64"])
_B32 = sorted(SYSCALL_TABLES["b32"])
_KEYS = st.from_regex(r"[a-z][a-z0-9_-]{0,9}", fullmatch=True)


@st.composite
def _valid_syscall_rules(draw: st.DrawFn) -> str:
    arch = draw(st.sampled_from(["b64", "b32", "x86_64", "i386"]))
    names = _B64 if arch in ("b64", "x86_64") else _B32
    syscalls = draw(st.lists(st.sampled_from(names), min_size=1, max_size=5))
    groups = [",".join(syscalls[i : i + 2]) for i in range(0, len(syscalls), 2)]
    fields = draw(
        st.lists(
            st.sampled_from(["-F auid>=1000", "-F auid!=unset", "-F uid=0", "-F success=1", "-F exit=-EACCES",
                             "-F a1&=0x40", "-F exe=/usr/bin/x", "-F ppid=1", "-C uid!=euid"]),
            unique=True, max_size=4,
        )
    )  # fmt: skip
    keys = draw(st.lists(_KEYS, max_size=2))
    action = draw(st.sampled_from(["always,exit", "exit,always", "never,exit", "exit,never"]))
    head = draw(st.sampled_from(["-a", "-A"]))
    parts = [
        head,
        action,
        f"-F arch={arch}",
        *(f"-S {g}" for g in groups),
        *fields,
        *(f"-k {k}" for k in keys),
    ]
    return "  ".join(parts)


@settings(max_examples=300)
@given(_valid_syscall_rules())
def test_generated_valid_rules_stay_valid_after_normalization(text: str) -> None:
    rule = parse_rule(text)
    again = parse_rule(rule.text)
    assert again == rule
    assert again.listing is not None and again.listing.startswith(
        f"-a {rule.action},exit -F arch={rule.arch} -S "
    )
    # The listing itself is a valid rule for auditctl: what it prints can be loaded back.
    assert parse_rule(again.listing).listing == again.listing


@settings(max_examples=200)
@given(
    st.lists(st.text(alphabet="abcdefghij._-0123456789", min_size=1, max_size=8), min_size=1, max_size=4),
    st.sets(st.sampled_from("rwxa"), min_size=1),
    st.lists(_KEYS, max_size=2),
)
def test_generated_watches_round_trip(parts: list[str], perms: set[str], keys: list[str]) -> None:
    path = "/" + "/".join(p if p not in (".", "..") else "d" for p in parts)
    text = f"-w {path} -p {''.join(sorted(perms))}" + "".join(f" -k {k}" for k in keys)
    rule = parse_rule(text)
    assert parse_rule(rule.text) == rule
    assert rule.listing == f"-w {path} -p {''.join(c for c in 'rwxa' if c in perms)}" + "".join(
        f" -k {k}" for k in keys
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(_valid_syscall_rules(), min_size=1, max_size=4))
def test_valid_rules_stay_valid_after_rendering(texts: list[str]) -> None:
    """Through the real model and renderer: every rule line of the bundle's rules file parses to the
    same rule, and expected.rules holds exactly their listings."""
    from nodeaudit.core.bundle import render_bundle, rules_file_name
    from nodeaudit.core.policy import parse_policy

    doc = {"apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicy", "metadata": {"name": "prop"},
           "spec": {"rules": texts, "volume": "forensic"}}
    bundle = render_bundle(parse_policy(doc))
    lines = [line for line in bundle.files[rules_file_name("prop")].decode().splitlines()
             if line and not line.startswith("#") and line != "-c"]
    rendered = [parse_rule(line) for line in lines]
    assert rendered == list(dict.fromkeys(parse_rule(t) for t in texts))  # duplicates dropped, order kept
    assert bundle.files["expected.rules"].decode().splitlines() == [r.listing for r in rendered]


# The seven gaps the real-rules corpus found (tests/test_real_rules.py runs all of it); listings as
# auditctl 3.0.9 printed them for the corpus lines these are taken from.
@pytest.mark.parametrize(
    ("rule", "text", "listing"),
    [
        (  # octal a1 mask (30-ospp-v42-1-create-failed.rules): O_CREAT is 0100
            "-a always,exit -F arch=b64 -S open -F a1&0100 -F exit=-EACCES -k create",
            "-a always,exit -F arch=b64 -S open -F a1&0100 -F exit=-EACCES -k create",
            "-a always,exit -F arch=b64 -S open -F a1&0x40 -F exit=-EACCES -F key=create",
        ),
        (  # a 40-byte key (Neo23x0/auditd)
            "-w /etc/hosts -p wa -k T1016_System_Network_Configuration_Discovery",
            "-w /etc/hosts -p wa -k T1016_System_Network_Configuration_Discovery",
            "-w /etc/hosts -p wa -k T1016_System_Network_Configuration_Discovery",
        ),
        (  # a key after only dir= (32-power-abuse.rules)
            "-a always,exit -F dir=/home -F uid=0 -C auid!=obj_uid -k power-abuse",
            "-a always,exit -F dir=/home -F uid=0 -C auid!=obj_uid -k power-abuse",
            "-a always,exit -S all -F dir=/home -F uid=0 -C auid!=obj_uid -F key=power-abuse",
        ),
        (  # -F key= on a watch
            "-w /etc/systemd -p wa -F key=systemd",
            "-w /etc/systemd -p wa -k systemd",
            "-w /etc/systemd -p wa -k systemd",
        ),
        (  # -p inside an -a rule is the perm field
            "-a always,exit -F arch=b64 -F path=/usr/bin/falcon-agent -p x -F key=falcon_agent",
            "-a always,exit -F arch=b64 -F path=/usr/bin/falcon-agent -F perm=x -F key=falcon_agent",
            "-a always,exit -F arch=b64 -S all -F path=/usr/bin/falcon-agent -F perm=x -F key=falcon_agent",
        ),
        (  # values attached to their option, as getopt reads them
            "-a always,exit -F arch=b64 -C euid!=uid -F euid=0 -Fauid>=1000 -S execve -kactions",
            "-a always,exit -F arch=b64 -C euid!=uid -F euid=0 -F auid>=1000 -S execve -k actions",
            "-a always,exit -F arch=b64 -S execve -C uid!=euid -F euid=0 -F auid>=1000 -F key=actions",
        ),
    ],
)
def test_corpus_gaps_are_accepted_with_auditctls_listing(rule: str, text: str, listing: str) -> None:
    parsed = parse_rule(rule)
    assert (parsed.text, parsed.listing) == (text, listing)
    assert parse_rule(parsed.text).listing == listing  # the normalized text means the same


def test_node_wide_switches_load_only_with_their_opt_in() -> None:
    assert parse_rule("-a task,never", unsafe=Unsafe(allow_task_never=True)).listing == "-a never,task"
    assert parse_rule("--loginuid-immutable", unsafe=Unsafe(allow_loginuid_immutable=True)).kind == "control"
    assert parse_rule("-e 0", unsafe=Unsafe(allow_audit_off=True)).value == 0
    # Each opt-in opens only its own door.
    with pytest.raises(RuleError, match="allowAuditOff"):
        parse_rule("-e 0", unsafe=Unsafe(allow_task_never=True, allow_loginuid_immutable=True))
    # -a never,task with a field stays allowed: it carves out, it does not switch off.
    assert parse_rule("-a never,task -F uid=12345").listing == "-a never,task -F uid=12345"
