"""apply.sh in a real Debian bookworm root, with the real apt, kernel audit, auditd and audisp-syslog.

Each test gets fresh roots from cached tarballs and runs the rendered bundle the way the Job does
(job-entry.sh copies it to /var/lib/nodeaudit/bundles/<hex>/ and chroots in, inside a private mount
namespace). The `host` fixture holds the kernel-audit lock and restores the kernel in teardown.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import cast

import pytest

from tests.host import costlib, hostlib
from tests.host.costlib import find_exec_record
from tests.host.hostlib import PROCMON_LISTED, Rootfs
from tests.policies import PROCMON_RULES, policy_doc

V3_PLUGIN = "etc/audit/plugins.d/syslog.conf"
RULES_FILE = "etc/audit/rules.d/60-nodeaudit-procmon.rules"
FOREIGN_RULE = "-w /etc/passwd -p wa -k foreign"


def ok(res: hostlib.Result) -> dict[str, object]:
    assert res.rc == 0, res
    assert res.result is not None, res
    assert res.result["ok"] is True, res
    return res.result


def expected(bundle: Path) -> list[str]:
    return (bundle / "expected.rules").read_text().splitlines()


def auditd_pids(root: Rootfs) -> list[int]:
    return [p for p in root.processes() if hostlib.comm(p) == "auditd"]


def plugin_pids(root: Rootfs) -> list[int]:
    return [p for p in root.processes() if hostlib.comm(p) == "audisp-syslog"]


def assert_record_reaches_syslog(root: Rootfs, devlog: hostlib.DevLog) -> None:
    marker = costlib.run_marker(root)
    found = devlog.wait_for(lambda msgs: find_exec_record(msgs, marker), timeout=10)
    assert found, f"no EXECVE record with {marker} reached /dev/log; got {len(devlog.messages)} datagrams"
    execve, syscall = cast(tuple[str, str], found)
    assert execve.startswith("<86>"), execve
    assert syscall.startswith("<86>"), syscall
    assert 'key="procmon"' in syscall


def file_mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_fresh_host_installs_loads_and_ships_to_syslog_then_reapplies_idempotently(host, tmp_path):
    root = host.root("fresh")
    assert not (root / "usr/sbin/auditd").exists()
    devlog = host.devlog(root)
    bundle = hostlib.render_policy_bundle(host.bundle("v1"), policy_doc("procmon", list(PROCMON_RULES)))
    termlog = tmp_path / "termination-log"
    termlog.write_text("")

    first = root.run_bundle(bundle, termination_log=termlog)
    result = ok(first)
    assert result["installed"] is True
    assert result["distro"] == "debian-12"
    assert str(result["auditVersion"]).startswith("3.")
    assert result["rulesLoaded"] == len(expected(bundle)) >= 2
    assert json.loads(termlog.read_text().strip()) == result
    assert "apt-get install auditd" in first.stderr
    assert (root / "usr/sbin/auditd").exists()

    listed = host.audit.rules()
    for line in [*PROCMON_LISTED, *expected(bundle)]:
        assert line in listed
    assert file_mode(root / RULES_FILE) == (0o640, 0, 0)
    assert file_mode(root / V3_PLUGIN) == (0o640, 0, 0)
    assert (root / V3_PLUGIN).read_bytes() == (bundle / "syslog-v3.conf").read_bytes()
    pid = int(host.audit.status()["pid"])
    assert auditd_pids(root) == [pid]
    assert plugin_pids(root)
    # The bundle landed where the Job puts it.
    hexdigest = str(result["bundle"]).split(":", 1)[1]
    assert (root / f"var/lib/nodeaudit/bundles/{hexdigest}/apply.sh").exists()

    assert_record_reaches_syslog(root, devlog)

    second = root.run_bundle(bundle)
    again = ok(second)
    print(f"first apply (with install): {first.seconds:.2f}s; re-apply: {second.seconds:.3f}s")
    assert again["installed"] is False
    assert again["restarted"] is False
    assert again["message"] == "already applied"
    assert "apt-get" not in second.stderr
    assert int(host.audit.status()["pid"]) == pid
    assert auditd_pids(root) == [pid]
    per_run = ("installed", "restarted", "message", "lost", "backlog", "canaryId", "canaryAt", "canarySeen")
    assert {k: v for k, v in again.items() if k not in per_run} == {k: v for k, v in result.items() if k not in per_run}
    assert again["canaryId"] and again["canaryId"] != result["canaryId"]  # one canary per apply
    assert second.seconds < 1.0, second
    assert_record_reaches_syslog(root, devlog)


def test_sighup_alone_starts_a_newly_activated_plugin(host):
    """Decides DESIGN.md's open question on audit 3.0.9: no restart is needed for the plugin."""
    root = host.root()
    devlog = host.devlog(root)
    quiet = hostlib.render_policy_bundle(
        host.bundle("nosyslog"), policy_doc("procmon", list(PROCMON_RULES), syslog={"enabled": False}))
    original_plugin = (root / V3_PLUGIN).read_bytes()
    first = ok(root.run_bundle(quiet))
    assert first["restarted"] is True  # auditd was not running in the root at all: started
    assert (root / V3_PLUGIN).read_bytes() == original_plugin
    pid = int(host.audit.status()["pid"])
    assert not plugin_pids(root)

    loud = hostlib.render_policy_bundle(host.bundle("syslog"), policy_doc("procmon", list(PROCMON_RULES)))
    res = root.run_bundle(loud)
    second = ok(res)
    assert second["restarted"] is False, res
    assert int(host.audit.status()["pid"]) == pid
    assert plugin_pids(root)
    assert_record_reaches_syslog(root, devlog)


def test_policy_change_loads_new_rule_and_drops_old(host):
    root = host.root()
    v1 = hostlib.render_policy_bundle(host.bundle("v1"), policy_doc("procmon", [PROCMON_RULES[0]]))
    ok(root.run_bundle(v1))
    assert PROCMON_LISTED[0] in host.audit.rules()
    pid = int(host.audit.status()["pid"])

    new_rule = "-w /etc/shadow -p wa -k shadow"
    v2 = hostlib.render_policy_bundle(host.bundle("v2"), policy_doc("procmon", [new_rule]))
    res = root.run_bundle(v2)
    result = ok(res)
    assert result["bundle"] != json.loads((v1 / "bundle.json").read_text())["hash"]
    listed = host.audit.rules()
    assert new_rule in listed
    assert PROCMON_LISTED[0] not in listed
    assert result["restarted"] is False  # rules alone need no daemon restart
    assert int(host.audit.status()["pid"]) == pid
    assert (root / RULES_FILE).read_bytes() == (v2 / "60-nodeaudit-procmon.rules").read_bytes()


def test_removal_keeps_foreign_rules_and_restores_plugin(host):
    root = host.root()
    original_plugin = (root / V3_PLUGIN).read_bytes()
    (root / "etc/audit/rules.d/10-foreign.rules").write_text(FOREIGN_RULE + "\n")
    bundle = hostlib.render_policy_bundle(host.bundle("v1"), policy_doc("procmon", list(PROCMON_RULES)))
    ok(root.run_bundle(bundle))
    listed = host.audit.rules()
    assert FOREIGN_RULE in listed and PROCMON_LISTED[0] in listed
    assert (root / "var/lib/nodeaudit/state/orig-syslog-v3.conf").read_bytes() == original_plugin
    pid = int(host.audit.status()["pid"])

    res = root.run_bundle(bundle, remove=True)
    result = ok(res)
    assert result["action"] == "remove"
    assert result["rulesLoaded"] == 0
    listed = host.audit.rules()
    assert FOREIGN_RULE in listed
    assert not set(expected(bundle)) & set(listed)
    assert not (root / RULES_FILE).exists()
    assert (root / "etc/audit/rules.d/10-foreign.rules").read_text() == FOREIGN_RULE + "\n"
    assert (root / V3_PLUGIN).read_bytes() == original_plugin
    assert not (root / "var/lib/nodeaudit/state/orig-syslog-v3.conf").exists()
    assert int(host.audit.status()["pid"]) == pid  # auditd keeps running for the foreign rules

    again = ok(root.run_bundle(bundle, remove=True))
    assert again["message"] == "nothing to remove"


def test_removal_keeps_plugin_while_another_policy_remains(host):
    root = host.root()
    shadow = "-w /etc/shadow -p wa -k shadow"
    a = hostlib.write_bundle(host.bundle("a"), "procmon", list(PROCMON_RULES), list(PROCMON_LISTED))
    b = hostlib.write_bundle(host.bundle("b"), "shadow", [shadow], [shadow])
    ok(root.run_bundle(a))
    ok(root.run_bundle(b))
    result = ok(root.run_bundle(a, remove=True))
    assert result["message"] == "removed"  # not "plugin config restored": policy b still needs it
    assert (root / V3_PLUGIN).read_bytes() == (b / "syslog-v3.conf").read_bytes()
    listed = host.audit.rules()
    assert shadow in listed
    assert PROCMON_LISTED[0] not in listed
    assert plugin_pids(root)


def test_rule_already_loaded_by_a_foreign_file(host):
    """The manual procedure left /etc/audit/rules.d/10-procmon.rules with the seed rule; the kernel
    answers "Rule exists" for our copy; the `-c` the renderer puts first keeps loading past it."""
    root = host.root()
    (root / "etc/audit/rules.d/10-procmon.rules").write_text(PROCMON_RULES[0] + "\n")
    shadow = "-w /etc/shadow -p wa -k shadow"
    bundle = hostlib.render_policy_bundle(host.bundle("v1"), policy_doc("procmon", [PROCMON_RULES[0], shadow]))
    res = root.run_bundle(bundle)
    assert "-c" in (bundle / "60-nodeaudit-procmon.rules").read_text().splitlines()
    result = ok(res)
    assert result["rulesLoaded"] == len(expected(bundle))
    assert shadow in host.audit.rules()


def snapshot(root: Rootfs) -> dict[str, bytes | None]:
    files: dict[str, bytes | None] = {}
    for top in ("etc/audit", "etc/audisp", "var/lib/nodeaudit/state"):
        base = root / top
        if not base.exists():
            files[top] = None
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file():
                files[str(path.relative_to(root.path))] = path.read_bytes()
    return files


def test_broken_apt_sources_fail_cleanly_and_leave_host_unchanged(host):
    root = host.root("fresh")
    # Port 9 (discard) on loopback refuses at once: no traffic leaves the machine.
    (root / "etc/apt/sources.list").write_text("deb http://127.0.0.1:9/debian bookworm main\n")
    before = snapshot(root)
    bundle = hostlib.render_policy_bundle(host.bundle("v1"), policy_doc("procmon", list(PROCMON_RULES)))
    res = root.run_bundle(bundle)
    assert res.rc != 0, res
    assert res.result is not None, res
    assert res.result["ok"] is False
    assert "package install failed" in str(res.result["message"]), res.result
    assert "auditd" in str(res.result["message"])
    assert res.result["installed"] is False
    assert snapshot(root) == before
    assert not (root / "usr/sbin/auditd").exists()
    assert host.audit.rules() == []
    assert host.audit.status()["pid"] == "0"
    assert root.processes() == []


def test_rule_the_kernel_refuses_restores_previous_rules_and_keeps_auditd(host):
    root = host.root()
    good = hostlib.render_policy_bundle(host.bundle("good"), policy_doc("procmon", list(PROCMON_RULES)))
    ok(root.run_bundle(good))
    pid = int(host.audit.status()["pid"])
    good_rules = (root / RULES_FILE).read_bytes()

    # Well-formed (auditctl parses it, a validator has no reason to refuse it) but the kernel
    # answers ENOENT: a watch needs its parent directory to exist.
    refused = "-w /nonexistent-nodeaudit/dir/file -p x -k refused"
    bad = hostlib.write_bundle(
        host.bundle("bad"), "procmon", [PROCMON_RULES[0], refused, "-a always,exit -F arch=b64 -S openat -k second"],
        [PROCMON_LISTED[0], refused, "-a always,exit -F arch=b64 -S openat -F key=second"])
    res = root.run_bundle(bad)
    assert res.rc != 0, res
    assert res.result is not None and res.result["ok"] is False, res
    message = str(res.result["message"])
    assert "kernel refused" in message and "restored" in message, message
    assert (root / RULES_FILE).read_bytes() == good_rules
    assert file_mode(root / RULES_FILE) == (0o640, 0, 0)
    listed = host.audit.rules()
    assert set(PROCMON_LISTED) <= set(listed)
    assert refused not in listed
    assert not any("key=second" in line for line in listed)
    assert int(host.audit.status()["pid"]) == pid
    assert auditd_pids(root) == [pid]
    assert not list((root / "var/lib/nodeaudit/state").glob("tx.*"))
    assert ok(root.run_bundle(good))["message"] == "already applied"


def test_hand_edited_plugin_config_is_put_right(host):
    root = host.root()
    devlog = host.devlog(root)
    bundle = hostlib.render_policy_bundle(host.bundle("v1"), policy_doc("procmon", list(PROCMON_RULES)))
    ok(root.run_bundle(bundle))
    pid = int(host.audit.status()["pid"])
    plugin = root / V3_PLUGIN
    plugin.write_text(plugin.read_text().replace("LOG_AUTHPRIV", "LOG_LOCAL3"))
    os.chmod(plugin, 0o666)
    res = root.run_bundle(bundle)
    result = ok(res)
    assert result["message"] == "applied"
    assert plugin.read_bytes() == (bundle / "syslog-v3.conf").read_bytes()
    assert file_mode(plugin) == (0o640, 0, 0)
    assert int(host.audit.status()["pid"]) == pid
    devlog.drain(0.5)
    devlog.messages.clear()
    assert_record_reaches_syslog(root, devlog)

    # A symlink in place of the config (auditd refuses those) is replaced by a regular file.
    plugin.unlink()
    (root / "etc/audit/plugins.d/elsewhere.conf.disabled").write_bytes((bundle / "syslog-v3.conf").read_bytes())
    plugin.symlink_to("elsewhere.conf.disabled")
    ok(root.run_bundle(bundle))
    assert not plugin.is_symlink()
    assert file_mode(plugin) == (0o640, 0, 0)


def test_rules_flushed_behind_our_back_are_loaded_again(host):
    root = host.root()
    bundle = hostlib.render_policy_bundle(host.bundle("v1"), policy_doc("procmon", list(PROCMON_RULES)))
    ok(root.run_bundle(bundle))
    pid = int(host.audit.status()["pid"])
    host.audit.auditctl("-D")
    assert host.audit.rules() == []
    result = ok(root.run_bundle(bundle))
    assert result["rulesLoaded"] == len(expected(bundle))
    assert set(PROCMON_LISTED) <= set(host.audit.rules())
    assert int(host.audit.status()["pid"]) == pid


def test_refused_rule_rolls_back_completely_beside_a_foreign_duplicate(host):
    """The rollback loads the previous rules again; a foreign copy of one of them (the manual
    procedure's 10-procmon.rules) makes that load answer "Rule exists" as well. That is a complete
    rollback, not "ROLLBACK INCOMPLETE"."""
    root = host.root()
    (root / "etc/audit/rules.d/10-procmon.rules").write_text(PROCMON_RULES[0] + "\n")
    good = hostlib.render_policy_bundle(host.bundle("good"), policy_doc("procmon", list(PROCMON_RULES)))
    ok(root.run_bundle(good))
    pid = int(host.audit.status()["pid"])
    good_rules = (root / RULES_FILE).read_bytes()

    refused = "-w /nonexistent-nodeaudit/dir/file -p x -k refused"
    bad = hostlib.write_bundle(host.bundle("bad"), "procmon", ["-c", PROCMON_RULES[0], refused],
                               [PROCMON_LISTED[0], refused])
    res = root.run_bundle(bad)
    assert res.rc != 0, res
    assert res.result is not None and res.result["ok"] is False, res
    message = str(res.result["message"])
    assert "ROLLBACK INCOMPLETE" not in message, res
    assert message.endswith("(previous rules and plugin config restored)"), res
    assert message.startswith("the kernel refused the rules (augenrules --load exit 1: "), res
    assert "(No such file or directory)" in message and "Rule exists" not in message, res
    assert "Rule exists" in res.stderr.rsplit("nodeaudit: augenrules --load\n", 1)[-1], res  # the rollback's load
    assert (root / RULES_FILE).read_bytes() == good_rules
    listed = host.audit.rules()
    assert set(PROCMON_LISTED) <= set(listed)
    assert refused not in listed
    assert int(host.audit.status()["pid"]) == pid
    assert not list((root / "var/lib/nodeaudit/state").glob("tx.*"))
    assert ok(root.run_bundle(good))["message"] == "already applied"


@pytest.mark.parametrize(("fmt", "kind", "seen"), [("raw", "auditd", "auditd"), ("json", "python", "dispatcher")])
def test_each_apply_sends_a_canary_that_reaches_dev_log(host, fmt, kind, seen):
    """The canary travels the policy's own way: kernel -> auditd -> audisp-syslog (raw) or the JSON
    dispatcher (json) -> the root's /dev/log at the policy's facility and level, with a marker
    naming node, bundle and time; apply.sh confirms it on the node where it can."""
    root = host.root(kind)
    devlog = host.devlog(root)
    policy = policy_doc("procmon", list(PROCMON_RULES), syslog={"format": fmt})
    bundle = hostlib.render_policy_bundle(host.bundle(f"c-{fmt}"), policy)
    with costlib.Draining(devlog):  # as the node's syslog daemon reads: a full socket drops (json)
        result = ok(root.run_bundle(bundle, env={"NODE_NAME": "aks-user-12345678-vmss000003"}))
        canary = str(result["canaryId"])
        # the user message itself (json: the execve rule also records auditctl's exec with the marker)
        user = "type=USER" if fmt == "raw" else '"type":"USER"'
        found = devlog.wait_for(lambda msgs: [m for m in msgs if f"nodeaudit-canary id={canary}" in m and user in m],
                                timeout=10)
        again = ok(root.run_bundle(bundle))
    assert result["syslogFormat"] == fmt, result
    node, short, at_pid = canary.split(":")
    assert node == "aks-user-12345678-vmss000003"
    assert str(result["bundle"]).split(":", 1)[1].startswith(short) and len(short) == 12
    assert int(at_pid.split("-")[0]) == result["canaryAt"] and int(at_pid.split("-")[0]) > 0
    # raw: nothing on this root shows syslog to apply.sh (no journald, no syslog file), auditd's log
    # saw it; json: the dispatcher's state file names the canary it sent
    assert result["canarySeen"] == seen, result
    assert found, f"canary {canary} did not reach /dev/log; got {len(devlog.messages)} datagrams"
    line = found[0]
    assert line.startswith("<86>"), line  # authpriv.info
    if fmt == "raw":
        assert "type=USER" in line, line
    else:
        event = json.loads(line.split(" nodeaudit: ", 1)[1])
        assert event["type"] == "USER" and f"nodeaudit-canary id={canary} policy=procmon" in event["msg"], event
    assert again["canaryId"] != canary  # one canary per apply
