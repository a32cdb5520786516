"""Each volume level and exclusion on the real kernel, through apply.sh, auditd 3.0.9 and audisp-syslog.

For one marker process (`/bin/echo MARKER` inside the root) the datagrams that reach /dev/log are
collected by event serial: what each level ships is exactly what the kernel let through.
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter

from tests.host import costlib, hostlib
from tests.host.hostlib import PROCMON_LISTED
from tests.policies import policy_doc

ECHO = "/usr/bin/echo"  # what the kernel reports as exe for /bin/echo (usrmerged bookworm)


def apply_policy(host, root, name: str, **spec: object) -> dict[str, object]:
    bundle = hostlib.render_policy_bundle(host.bundle(name), policy_doc("procmon", [], **spec))
    res = root.run_bundle(bundle)
    assert res.rc == 0 and res.result and res.result["ok"] is True, res
    return res.result


def marker_event(host, volume: str, **spec: object) -> tuple[costlib.Event, str]:
    root = host.root()
    devlog = host.devlog(root)
    apply_policy(host, root, volume, presets=["procmon"], volume=volume, **spec)
    marker = costlib.run_marker(root)
    event = costlib.wait_event(devlog, marker, ECHO)
    assert event, f"no event for {marker} reached /dev/log ({len(devlog.messages)} datagrams)"
    for msg in event.messages:
        assert msg.startswith("<86>"), msg  # authpriv.info
    return event, marker


def assert_who_what(event: costlib.Event, marker: str) -> None:
    (syscall,) = event.of_type("SYSCALL")
    assert 'key="procmon"' in syscall
    assert f'exe="{ECHO}"' in syscall
    for field in ("ppid=", " pid=", "auid=", " uid=", "syscall=59"):
        assert field in syscall, field
    (execve,) = event.of_type("EXECVE")
    assert f'a0="/bin/echo" a1="{marker}"' in execve


def test_lean_ships_exactly_syscall_and_execve(host):
    event, marker = marker_event(host, "lean")
    assert event.types == ["EXECVE", "SYSCALL"], event.messages
    assert_who_what(event, marker)
    print(f"lean: {len(event.messages)} records, {event.bytes} bytes")


def test_standard_adds_cwd_path_proctitle(host):
    event, marker = marker_event(host, "standard")
    counts = Counter(event.types)
    assert set(counts) == {"SYSCALL", "EXECVE", "CWD", "PATH", "PROCTITLE"}, event.messages
    assert counts["SYSCALL"] == counts["EXECVE"] == counts["CWD"] == counts["PROCTITLE"] == 1
    assert counts["PATH"] >= 1
    assert_who_what(event, marker)
    assert any('name="/bin/echo"' in p for p in event.of_type("PATH")), event.of_type("PATH")
    assert 'cwd="/"' in event.of_type("CWD")[0]
    print(f"standard: {len(event.messages)} records, {event.bytes} bytes")


def test_forensic_is_the_seed_and_ships_eoe_and_bprm_fcaps(host):
    event, marker = marker_event(host, "forensic")
    # forensic adds no filter at all: the kernel holds exactly the seed's two rules.
    assert host.audit.rules() == list(PROCMON_LISTED)
    counts = Counter(event.types)
    assert {"SYSCALL", "EXECVE", "CWD", "PATH", "PROCTITLE", "EOE"} <= set(counts), event.messages
    # The kernel emits BPRM_FCAPS when an exec changes the capability sets: root's execs do.
    assert counts["BPRM_FCAPS"] == 1, event.messages
    assert counts["EOE"] == 1
    assert_who_what(event, marker)
    print(f"forensic: {len(event.messages)} records, {event.bytes} bytes")


def test_excluded_executable_ships_nothing_and_never_rules_come_first(host):
    root = host.root()
    devlog = host.devlog(root)
    unique = f"/opt/nodeaudit-test-{uuid.uuid4().hex[:12]}"
    (root / unique).mkdir(parents=True)
    quiet, loud = f"{unique}/quiet-true", f"{unique}/loud-true"
    for path in (quiet, loud):
        shutil.copy2(root / "usr/bin/true", root / path)
    try:
        apply_policy(host, root, "exclude", presets=["procmon"], volume="lean",
                     exclude={"executables": [quiet], "aksNoise": True})
        check_exclusion(host, root, devlog, quiet, loud)
    finally:
        # The kernel resolves an exe= rule's path in the deleting process's root: only this root
        # has /opt/nodeaudit-test-*, so the harness's `auditctl -D` (from its own root) would stop
        # at these rules. Flush from inside this root.
        root.run("auditctl", "-D")


def check_exclusion(host, root, devlog, quiet: str, loud: str) -> None:
    listed = host.audit.rules()
    exit_list = [line for line in listed if line.startswith("-a ") and ",exit" in line.split()[1]]
    actions = [line.split()[1].split(",")[0] for line in exit_list]
    assert actions[:2] == ["never", "never"] and "always" in actions, exit_list
    assert actions == sorted(actions, key=lambda a: a != "never"), f"a never rule after an always rule: {exit_list}"
    assert any(f"exe={quiet}" in line for line in exit_list[:actions.count("never")])
    assert any("exe=/usr/bin/runc" in line for line in exit_list)  # aksNoise

    silent = costlib.run_marker(root, quiet)
    shipped = costlib.run_marker(root, loud)
    echoed = costlib.run_marker(root)
    assert costlib.wait_event(devlog, echoed, ECHO, settle=1.0), "the pipeline shipped nothing at all"
    assert costlib.find_event(devlog.messages, shipped, loud), "a non-excluded copy of true did not ship"
    leaked = [m for m in devlog.messages if f'exe="{quiet}"' in m or (silent in m and "EXECVE" in m
                                                                       and f'a0="{quiet}"' in m)]
    assert leaked == [], leaked


def test_auditd_rate_and_backlog_settings_reach_the_kernel(host):
    root = host.root()
    result = apply_policy(host, root, "limits", presets=["procmon"], volume="lean",
                          auditd={"rateLimit": 4321})
    status = host.audit.status()
    assert status["rate_limit"] == "4321"
    assert isinstance(result["lost"], int) and isinstance(result["backlog"], int), result
    assert result["lost"] == int(status["lost"]) or result["lost"] <= int(status["lost"])


def test_auditd_backlog_settings_reach_the_kernel(host):
    root = host.root()
    apply_policy(host, root, "backlog", presets=["procmon"], volume="lean",
                 auditd={"backlogLimit": 4321, "backlogWaitTime": 12345})
    status = host.audit.status()
    # The distro's audit.rules (-b 8192) loads after ours; apply.sh sets the policy's values last.
    assert (status["backlog_limit"], status["backlog_wait_time"]) == ("4321", "12345"), status
    bundle = hostlib.render_policy_bundle(host.bundle("backlog-again"), policy_doc(
        "procmon", [], presets=["procmon"], volume="lean", auditd={"backlogLimit": 4321, "backlogWaitTime": 12345}))
    again = root.run_bundle(bundle)
    assert again.rc == 0 and again.result and again.result["message"] == "already applied", again
