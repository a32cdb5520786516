"""apply.sh's distro, package-manager and audit-version branches, without a kernel.

Ubuntu, Azure Linux and audit 2.x cannot be installed on this machine, so these tests run the real
apply.sh against /etc/os-release fixtures in a temporary root (NODEAUDIT_HOST_ROOT) with stand-in
apt-get/tdnf/auditctl/augenrules/auditd/service/systemctl on PATH (tests/shell/standins/) that
record every call. PATH holds only the stand-ins and an allow-list of ordinary utilities, so a
missing stand-in can never reach the machine's real package manager or auditd. The stand-in auditd
is a real process tree (its 3.x syslog plugin child appears on SIGHUP) so apply.sh's /proc checks
run for real. The host tests (tests/host/) cover the real Debian path end to end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import REPO
from tests.host import hostlib
from tests.policies import PROCMON_RULES

STANDINS = Path(__file__).resolve().parent / "standins"
TOOLS = ("sh", "cat", "sed", "grep", "tr", "cut", "head", "tail", "mkdir", "mktemp", "cp", "mv", "rm",
         "chmod", "chown", "stat", "cmp", "dirname", "basename", "date", "id", "flock", "timeout", "ls",
         "env", "wc", "sort", "uniq")
PROCMON = list(PROCMON_RULES)
LISTED = list(hostlib.PROCMON_LISTED)

OS_RELEASES = {
    "ubuntu-18.04": ('NAME="Ubuntu"\nVERSION="18.04.6 LTS (Bionic Beaver)"\nID=ubuntu\nID_LIKE=debian\n'
                     'VERSION_ID="18.04"\n', "2.8.2"),
    "ubuntu-20.04": ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="20.04"\n', "2.8.5"),
    "ubuntu-22.04": ('PRETTY_NAME="Ubuntu 22.04.5 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\n'
                     'ID_LIKE=debian\n', "3.0.7"),
    "ubuntu-24.04": ('PRETTY_NAME="Ubuntu 24.04.2 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n'
                     'ID_LIKE=debian\n', "3.1.2"),
    "mariner-2.0": ('NAME="Common Base Linux Mariner"\nVERSION="2.0.20250304"\nID=mariner\nVERSION_ID="2.0"\n',
                    "3.0.6"),
    "azurelinux-3.0": ('NAME="Microsoft Azure Linux"\nVERSION="3.0.20250402"\nID=azurelinux\n'
                       'VERSION_ID="3.0"\n', "3.1.2"),
    "debian-12": ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_ID="12"\nID=debian\n', "3.0.9"),
}
EXPECTED_PM = {
    "ubuntu-18.04": "apt-get", "ubuntu-20.04": "apt-get", "ubuntu-22.04": "apt-get", "ubuntu-24.04": "apt-get",
    "mariner-2.0": "tdnf", "azurelinux-3.0": "tdnf", "debian-12": "apt-get",
}


class FakeHost:
    def __init__(self, tmp: Path, distro: str, version: str | None = None):
        self.root = tmp / "host"
        self.bin = tmp / "bin"
        self.tools = tmp / "tools"
        self.audit_bin = self.root / "audit-bin"
        for d in (self.root / "etc", self.bin, self.tools, self.audit_bin):
            d.mkdir(parents=True)
        text, default_version = OS_RELEASES[distro]
        (self.root / "etc/os-release").write_text(text)
        (self.root / "audit-version").write_text(version or default_version)
        for name in ("apt-get", "tdnf", "service", "systemctl", "sleep", "_install"):
            os.symlink(STANDINS / name, self.bin / name)
        (self.bin / "audit").symlink_to(STANDINS / "audit")
        for tool in TOOLS:
            real = shutil.which(tool, path="/usr/bin:/bin")
            assert real, tool
            os.symlink(real, self.tools / tool)
        self.bundles = tmp / "bundles"

    def install_audit(self) -> None:
        """A host that already has auditd (as after a first apply)."""
        subprocess.run([str(STANDINS / "_install")], env=self.env(), check=True)

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:{self.audit_bin}:{self.tools}",
            "NODEAUDIT_HOST_ROOT": str(self.root),
            "NODEAUDIT_TEST_PYTHON": sys.executable,
            "LANG": "C",
        }

    def bundle(self, name: str, rules: list[str] = PROCMON, expected: list[str] = LISTED, **kw: object) -> Path:
        return hostlib.write_bundle(self.bundles / name, "procmon", rules, expected, **kw)  # type: ignore[arg-type]

    def apply(self, bundle: Path, *args: str) -> tuple[int, dict[str, object], str]:
        (self.root / "calls.log").write_text("")
        proc = subprocess.run(["sh", str(bundle / "apply.sh"), *args], env=self.env(), capture_output=True,
                              text=True, timeout=60)
        lines = proc.stdout.strip().splitlines()
        assert lines, proc.stderr
        return proc.returncode, json.loads(lines[-1]), proc.stderr

    def calls(self) -> list[str]:
        return (self.root / "calls.log").read_text().splitlines()

    def stop(self) -> None:
        pid_file = self.root / "auditd.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            children = Path(f"/proc/{pid}/task/{pid}/children")
            kids = [int(k) for k in children.read_text().split()] if children.exists() else []
            for p in (pid, *kids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    if os.geteuid() != 0:
        pytest.skip("apply.sh runs as root (it chowns what it writes to root)")
    hosts: list[FakeHost] = []

    def make(distro: str, version: str | None = None) -> FakeHost:
        host = FakeHost(tmp_path / f"h{len(hosts)}", distro, version)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.stop()


@pytest.mark.parametrize("distro", sorted(OS_RELEASES))
def test_distro_picks_package_manager_package_and_plugin_layout(fake, distro):
    host = fake(distro)
    bundle = host.bundle("b")
    rc, result, err = host.apply(bundle)
    assert rc == 0, err
    assert result["ok"] is True and result["installed"] is True, result
    assert result["distro"] == distro
    calls = host.calls()
    installs = [c for c in calls if " install" in c]
    if EXPECTED_PM[distro] == "apt-get":
        assert len(installs) == 1 and installs[0].startswith("apt-get ") and installs[0].endswith(" auditd"), calls
        assert "DPkg::Lock::Timeout=" in installs[0]
        assert "apt-get -q -o DPkg::Lock::Timeout=" in calls[0] and calls[0].endswith(" update")
        assert not any(c.startswith("tdnf") for c in calls)
    else:
        assert installs == ["tdnf install -y audit"], calls
        assert not any(c.startswith("apt-get") for c in calls)

    version = result["auditVersion"]
    v2 = host.root / "etc/audisp/plugins.d/syslog.conf"
    v3 = host.root / "etc/audit/plugins.d/syslog.conf"
    if str(version).startswith("2."):
        assert v2.read_bytes() == (bundle / "syslog-v2.conf").read_bytes()
        assert b"path = builtin_syslog" in v2.read_bytes() and b"type = builtin" in v2.read_bytes()
        assert not v3.exists()
    else:
        assert v3.read_bytes() == (bundle / "syslog-v3.conf").read_bytes()
        assert b"path = /sbin/audisp-syslog" in v3.read_bytes() and b"type = always" in v3.read_bytes()
        assert not v2.exists()
    for path in (v2 if str(version).startswith("2.") else v3, host.root / "etc/audit/rules.d/60-nodeaudit-procmon.rules"):
        st = path.stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, 0)
    assert result["rulesLoaded"] == 2
    assert (result["lost"], result["backlog"]) == (7, 3)
    # The package did not start auditd (no init system here): apply.sh did, through `service`.
    assert "service auditd start" in calls and result["restarted"] is True

    rc, again, err = host.apply(bundle)
    assert rc == 0 and again["ok"] is True, err
    assert again["installed"] is False and again["restarted"] is False
    assert again["message"] == "already applied"
    calls = host.calls()
    assert not [c for c in calls if c.split()[0] in ("apt-get", "tdnf", "service", "systemctl", "augenrules", "auditd")], calls


def test_v3_plugin_change_uses_sighup_not_restart(fake):
    host = fake("ubuntu-22.04")
    host.install_audit()
    host.apply(host.bundle("quiet", syslog=False))
    pid = (host.root / "auditd.pid").read_text()
    rc, result, err = host.apply(host.bundle("loud"))
    assert rc == 0, err
    calls = host.calls()
    assert "auditctl --signal hup" in calls
    assert not [c for c in calls if "restart" in c], calls
    assert result["restarted"] is False
    assert (host.root / "auditd.pid").read_text() == pid


def test_v2_plugin_change_restarts(fake):
    """audispd's SIGHUP handling (2.x) could not be verified here: a plugin change restarts."""
    host = fake("ubuntu-20.04")
    host.install_audit()
    host.apply(host.bundle("quiet", syslog=False))
    rc, result, err = host.apply(host.bundle("loud"))
    assert rc == 0, err
    assert "service auditd restart" in host.calls()
    assert result["restarted"] is True


def test_systemd_host_uses_systemctl(fake):
    host = fake("ubuntu-20.04")
    (host.root / "run/systemd/system").mkdir(parents=True)
    host.install_audit()
    rc, result, err = host.apply(host.bundle("quiet", syslog=False))
    assert rc == 0, err
    assert "systemctl start auditd" in host.calls()
    rc, result, err = host.apply(host.bundle("loud"))
    assert rc == 0, err
    calls = host.calls()
    assert "systemctl restart auditd" in calls
    assert not [c for c in calls if c.startswith("service")]


def test_no_init_system_starts_auditd_directly(fake):
    host = fake("mariner-2.0")
    os.unlink(host.bin / "service")
    host.install_audit()
    rc, result, err = host.apply(host.bundle("b"))
    assert rc == 0, err
    assert "auditd " in host.calls()
    assert result["restarted"] is True


def test_locked_package_database_is_retried(fake):
    host = fake("ubuntu-24.04")
    (host.root / "lock-failures").write_text("2")
    rc, result, err = host.apply(host.bundle("b"))
    assert rc == 0 and result["ok"] is True, err
    calls = host.calls()
    assert len([c for c in calls if c.startswith("apt-get") and " install " in c]) == 3
    assert calls.count("sleep 5") == 2


def test_install_is_bounded_by_the_timeout(fake):
    host = fake("ubuntu-22.04")
    (host.root / "install-hangs").write_text("")
    rc, result, err = host.apply(host.bundle("b", install_timeout=2))
    assert rc != 0 and result["ok"] is False
    assert "did not finish within 2s" in str(result["message"])
    assert not (host.root / "etc/audit").exists()


def test_install_failure_reports_why_and_changes_nothing(fake):
    host = fake("debian-12")
    (host.root / "install-fails").write_text("")
    rc, result, err = host.apply(host.bundle("b"))
    assert rc != 0 and result["ok"] is False
    assert "Unable to locate package auditd" in str(result["message"])
    assert not (host.root / "etc/audit").exists()
    assert not (host.root / "var").exists()


@pytest.mark.parametrize(("distro", "why"), [("ubuntu-18.04", "unsupported Ubuntu release 16.04"),
                                             ("debian-12", "unsupported distro ID=fedora")])
def test_unsupported_distro_is_refused_before_installing(fake, distro, why):
    host = fake(distro)
    text = (host.root / "etc/os-release").read_text()
    text = text.replace('"18.04"', '"16.04"') if distro.startswith("ubuntu") else text.replace("ID=debian", "ID=fedora")
    (host.root / "etc/os-release").write_text(text)
    rc, result, _ = host.apply(host.bundle("b"))
    assert rc != 0 and why in str(result["message"])
    assert [c for c in host.calls() if c] == []


def test_immutable_rules_are_refused_unless_allowed(fake):
    host = fake("debian-12")
    host.install_audit()
    rc, result, _ = host.apply(host.bundle("imm", rules=[*PROCMON, "-e 2"]))
    assert rc != 0 and "-e 2" in str(result["message"])
    assert not (host.root / "etc/audit/rules.d/60-nodeaudit-procmon.rules").exists()
    assert "augenrules --load" not in host.calls()
    rc, result, err = host.apply(host.bundle("imm-ok", rules=[*PROCMON, "-e 2"], allow_immutable=True))
    assert rc == 0, err


def test_panic_on_failure_is_refused_unless_allowed(fake):
    """Stand-in kernel only: -f 2 is never loaded on this machine."""
    host = fake("debian-12")
    host.install_audit()
    rc, result, _ = host.apply(host.bundle("panic", rules=["-f 2", *PROCMON], allow_immutable=True))
    assert rc != 0 and "-f 2" in str(result["message"])
    assert not (host.root / "etc/audit/rules.d/60-nodeaudit-procmon.rules").exists()
    rc, result, err = host.apply(host.bundle("panic-ok", rules=["-f 2", *PROCMON], allow_panic=True))
    assert rc == 0, err


def test_bundle_env_is_parsed_not_sourced(fake, tmp_path):
    host = fake("debian-12")
    bundle = host.bundle("b")
    env = (bundle / "bundle.env").read_text()
    canary = tmp_path / "canary"
    (bundle / "bundle.env").write_text(env.replace("NODEAUDIT_SYSLOG=yes", f"NODEAUDIT_SYSLOG=$(touch {canary})"))
    rc, result, _ = host.apply(bundle)
    assert rc != 0 and "NODEAUDIT_SYSLOG" in str(result["message"])
    assert not canary.exists()
    (bundle / "bundle.env").write_text(env.replace("60-nodeaudit-procmon.rules", "../../../../etc/passwd"))
    rc, result, _ = host.apply(bundle)
    assert rc != 0 and "NODEAUDIT_RULES_FILE" in str(result["message"])
    assert host.calls() == []


def test_refused_rules_roll_back_file_and_kernel(fake):
    host = fake("azurelinux-3.0")
    good = host.bundle("good")
    assert host.apply(good)[0] == 0
    before = (host.root / "etc/audit/rules.d/60-nodeaudit-procmon.rules").read_bytes()
    rc, result, _ = host.apply(host.bundle("bad", rules=[*PROCMON, "-w /x/y -p x -k refused"]))
    assert rc != 0 and "kernel refused" in str(result["message"]) and "restored" in str(result["message"])
    assert (host.root / "etc/audit/rules.d/60-nodeaudit-procmon.rules").read_bytes() == before
    assert host.calls().count("augenrules --load") == 2  # the failed load, then the previous rules again
    assert "refused" not in (host.root / "kernel.rules").read_text()


def test_remove_restores_the_original_plugin_config(fake):
    host = fake("ubuntu-18.04")
    host.install_audit()
    plugin = host.root / "etc/audisp/plugins.d/syslog.conf"
    original = plugin.read_bytes()
    bundle = host.bundle("b")
    assert host.apply(bundle)[0] == 0
    assert plugin.read_bytes() != original
    rc, result, err = host.apply(bundle, "--remove")
    assert rc == 0 and result["action"] == "remove", err
    assert plugin.read_bytes() == original
    assert not (host.root / "etc/audit/rules.d/60-nodeaudit-procmon.rules").exists()
    assert result["rulesLoaded"] == 0


def test_version_falls_back_to_the_package_database(fake):
    host = fake("debian-12", version="unknown")
    host.install_audit()
    (host.bin / "dpkg-query").write_text("#!/bin/sh\nprintf '1:3.0.9-1'\n")
    os.chmod(host.bin / "dpkg-query", 0o755)
    rc, result, err = host.apply(host.bundle("b"))
    assert rc == 0, err
    assert result["auditVersion"] == "3.0.9"


@pytest.mark.parametrize("pad", range(4))
def test_long_message_with_quotes_and_backslashes_is_still_one_json_line(fake, pad):
    """The message is cut to 600 characters before it is escaped: a cut through an escape pair
    used to leave a lone backslash that escaped the closing quote."""
    host = fake("debian-12")
    host.install_audit()
    weird = "x" * pad + '\\"' * 400
    rc, result, _ = host.apply(host.bundle("b", expected=[*LISTED, weird]))  # json.loads in apply()
    assert rc != 0 and result["ok"] is False
    message = str(result["message"])
    assert message.startswith("verification: rule not loaded: " + weird[:40])
    assert 560 < len(message) <= 600
    assert '\\"\\"' in message


def test_dpkg_interrupted_is_reported_at_once_not_retried(fake):
    """Not a busy lock: waiting does not fix it (it needs `dpkg --configure -a`)."""
    host = fake("ubuntu-22.04")
    (host.root / "dpkg-interrupted").write_text("")
    rc, result, _ = host.apply(host.bundle("b"))
    assert rc != 0 and result["ok"] is False
    message = str(result["message"])
    assert message.startswith("package install failed (apt): ")
    assert "dpkg --configure -a" in message
    calls = host.calls()
    assert len([c for c in calls if " install " in c]) == 1, calls
    assert "sleep 5" not in calls


def test_install_timeout_reports_what_the_package_manager_said_last(fake):
    host = fake("ubuntu-24.04")
    (host.root / "install-hangs").write_text(
        "Waiting for cache lock: Could not get lock /var/lib/dpkg/lock-frontend. "
        "It is held by process 4242 (unattended-upgr)\n")
    rc, result, _ = host.apply(host.bundle("b", install_timeout=2))
    assert rc != 0 and result["ok"] is False
    message = str(result["message"])
    assert "did not finish within 2s (apt): last output: Waiting for cache lock" in message
    assert "held by process 4242 (unattended-upgr)" in message


def test_rollback_with_a_foreign_duplicate_rule_is_complete(fake):
    """A foreign copy of one of our rules makes every later load report "Rule exists", the
    rollback's load of the previous rules too: that is loaded, not a failed rollback."""
    host = fake("azurelinux-3.0")
    host.install_audit()
    rules_d = host.root / "etc/audit/rules.d"
    (rules_d / "10-procmon.rules").write_text(PROCMON[0] + "\n")
    rc, result, err = host.apply(host.bundle("good"))
    assert rc == 0 and result["ok"] is True, err
    before = (rules_d / "60-nodeaudit-procmon.rules").read_bytes()

    rc, result, _ = host.apply(host.bundle("bad", rules=[*PROCMON, "-w /x/y -p x -k refused"]))
    message = str(result["message"])
    assert rc != 0 and "ROLLBACK INCOMPLETE" not in message, message
    assert message.startswith("the kernel refused the rules (augenrules --load exit 1: ")
    assert "No such file or directory" in message and "Rule exists" not in message
    assert "line 7" not in message  # the duplicate's "There was an error in line 7" is left out
    assert message.endswith("(previous rules and plugin config restored)")
    assert (rules_d / "60-nodeaudit-procmon.rules").read_bytes() == before
    assert host.calls().count("augenrules --load") == 2
    assert "refused" not in (host.root / "kernel.rules").read_text()


def test_remove_quotes_why_the_remaining_rules_did_not_load(fake):
    host = fake("debian-12")
    host.install_audit()
    bundle = host.bundle("b")
    assert host.apply(bundle)[0] == 0
    (host.root / "etc/audit/rules.d/10-foreign.rules").write_text("-w /x/y -p x -k refused\n")
    rc, result, _ = host.apply(bundle, "--remove")
    message = str(result["message"])
    assert rc != 0 and message.startswith("the remaining rules did not load (augenrules --load exit 1: "), message
    assert "No such file or directory" in message
    # The foreign rule fails the rollback's load as well, and the message says so.
    assert "ROLLBACK INCOMPLETE: previous rules did not load (augenrules --load exit 1: " in message
    assert (host.root / "etc/audit/rules.d/60-nodeaudit-procmon.rules").exists()


def test_stale_backup_directories_are_cleaned_under_the_host_lock(fake):
    host = fake("debian-12")
    host.install_audit()
    stale = host.root / "var/lib/nodeaudit/state/tx.KILLED"
    stale.mkdir(parents=True)
    (stale / "rules").write_text("half a backup")
    rc, result, err = host.apply(host.bundle("b"))
    assert rc == 0 and result["ok"] is True, err
    assert not list((host.root / "var/lib/nodeaudit/state").glob("tx.*"))


def test_failed_backup_changes_nothing_and_rolls_nothing_back(fake):
    host = fake("debian-12")
    host.install_audit()
    # A directory where the rules file belongs: cp cannot back it up.
    (host.root / "etc/audit/rules.d/60-nodeaudit-procmon.rules").mkdir(parents=True)
    plugin = host.root / "etc/audit/plugins.d/syslog.conf"
    original = plugin.read_bytes()
    rc, result, _ = host.apply(host.bundle("b"))
    message = str(result["message"])
    assert rc != 0 and message.startswith("cannot back up "), message
    assert "restored" not in message and "ROLLBACK" not in message
    assert "augenrules --load" not in host.calls()
    assert plugin.read_bytes() == original
    assert not list((host.root / "var/lib/nodeaudit/state").glob("tx.*"))


def test_unopenable_host_lock_file_still_gives_a_result(fake):
    """`exec 9>file` failing used to exit dash with rc 2 and no result line."""
    host = fake("debian-12")
    host.install_audit()
    (host.root / "run/lock/nodeaudit-apply.lock").mkdir(parents=True)
    rc, result, err = host.apply(host.bundle("b"))
    assert rc == 0 and result["ok"] is True, err
    assert "running without the host lock" in err


def test_unknown_audit_version_quotes_what_auditctl_said(fake):
    host = fake("debian-12", version="unknown")
    host.install_audit()
    rc, result, _ = host.apply(host.bundle("b"))
    assert rc != 0
    assert "cannot tell the audit version (auditctl -v: 'auditctl version unknown')" in str(result["message"])


def test_missing_bundle_file_names_the_bundle_directory(fake):
    host = fake("debian-12")
    bundle = host.bundle("b")
    (bundle / "expected.rules").unlink()
    rc, result, _ = host.apply(bundle)
    assert rc != 0 and result["message"] == f"bundle file expected.rules missing in {bundle}"


# job-entry.sh: a Job deleted (or past activeDeadlineSeconds) gets SIGTERM in its shell only.

JOB_ENTRY = REPO / "operator" / "nodeaudit" / "host" / "job-entry.sh"
SLOW_APPLY = """#!/bin/sh
log=${FAKE_APPLY_LOG:?}
trap 'echo "term $*" >>"$log"; sleep 0.5; echo rolled-back >>"$log"
      echo "{\\"ok\\": false, \\"message\\": \\"interrupted by a signal (previous rules restored)\\"}"; exit 1' TERM
echo "started $* root=${NODEAUDIT_HOST_ROOT-unset}" >>"$log"
n=0
while [ "$n" -lt 200 ]; do sleep 0.1; n=$((n + 1)); done
echo "not interrupted" >>"$log"
echo '{"ok": true, "message": "applied"}'
"""


@pytest.mark.parametrize("via", ["chroot", "nsenter"])
def test_job_entry_passes_term_on_to_apply_and_waits_for_its_rollback(tmp_path, via):
    """With nsenter (which forks under -p and forwards nothing) the TERM goes to nsenter's child."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("sh", "cat", "sed", "tr", "tail", "mkdir", "mktemp", "cp", "mv", "rm", "chmod", "sleep"):
        os.symlink(shutil.which(tool, path="/usr/bin:/bin"), tools / tool)
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    for name in ("chroot", "nsenter"):
        os.symlink(STANDINS / name, stand_ins / name)
    src = tmp_path / "bundle"
    src.mkdir()
    (src / "bundle.env").write_text(f"NODEAUDIT_BUNDLE=sha256:{'ab' * 32}\n")
    (src / "apply.sh").write_text(SLOW_APPLY)
    host = tmp_path / "host"
    host.mkdir()
    log = tmp_path / "apply.log"
    termlog = tmp_path / "termination-log"
    termlog.write_text("")
    env = {"PATH": f"{stand_ins}:{tools}", "NODEAUDIT_BUNDLE_SRC": str(src), "NODEAUDIT_HOST_MOUNT": str(host),
           "NODEAUDIT_TERMINATION_LOG": str(termlog), "NODEAUDIT_NSENTER": "no" if via == "chroot" else "yes",
           "FAKE_APPLY_LOG": str(log), "NODEAUDIT_HOST_ROOT": "/host"}  # a stray value in the container environment
    proc = subprocess.Popen(["sh", str(JOB_ENTRY), "--remove"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            if log.exists() and log.read_text():
                break
            time.sleep(0.05)
        # apply.sh runs without the test-only prefix the Job's environment carries
        assert log.read_text() == "started --remove root=unset\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert log.read_text().splitlines() == ["started --remove root=unset", "term --remove", "rolled-back"], err
    assert proc.returncode == 1, err
    last = out.strip().splitlines()[-1]
    assert json.loads(last)["message"] == "interrupted by a signal (previous rules restored)"
    assert termlog.read_text() == last + "\n"
    assert "SIGTERM: passing TERM on to apply.sh" in err


@pytest.mark.parametrize(("auth_log", "syslog_down", "seen", "slow"), [
    (False, False, "auditd", False),  # nothing on the host shows syslog: auditd's log, no wait
    (True, False, "syslog", False),   # the syslog daemon wrote it to auth.log: it left the pipeline
    (True, True, "auditd", True),     # a syslog daemon that never gets it: waited for, then said
])
def test_the_canary_is_confirmed_where_the_host_shows_it(fake, auth_log, syslog_down, seen, slow):
    host = fake("ubuntu-22.04")
    host.install_audit()
    if auth_log:
        (host.root / "var/log").mkdir(parents=True, exist_ok=True)
        (host.root / "var/log/auth.log").write_text("")
    if syslog_down:
        (host.root / "syslog-down").write_text("")
    started = time.monotonic()
    rc, result, err = host.apply(host.bundle("canary"))
    took = time.monotonic() - started
    assert rc == 0 and result["canarySeen"] == seen, (result, err)
    assert f"auditctl -m nodeaudit-canary id={result['canaryId']} policy=procmon" in host.calls()
    assert (took > 2.5) == slow, took
    assert ("not seen after the audit pipeline" in err) == (seen == "auditd"), err
