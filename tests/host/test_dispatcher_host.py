"""syslog.format json on the real kernel with the real auditd 3.0.9 in a Debian 12 root with python3:
apply.sh installs the dispatcher in place of audisp-syslog, and every audit event reaches the
root's /dev/log as one `<86>` datagram, tag nodeaudit, attributed to its pod.

The pod is made here the way kubelet (systemd cgroup driver) and containerd lay it out: a
`kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`
cgroup in this machine's hierarchy (removed after) and the container's task state
`/run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/config.json` with the CRI annotations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from nodeaudit.hostaudit import guard as kernel_guard
from tests.host import costlib, hostlib
from tests.host.hostlib import Rootfs
from tests.host.podlib import CgroupUnavailable, KubeletCgroup, write_task_state
from tests.policies import PROCMON_RULES, policy_doc

pytestmark = pytest.mark.host

DASH = "/usr/bin/dash"
STATE = "var/lib/nodeaudit/state/dispatcher.json"


def json_events(messages: list[str]) -> list[tuple[str, dict]]:
    """(PRI, event) of every nodeaudit JSON datagram."""
    out = []
    for message in messages:
        head, sep, body = message.partition(">nodeaudit: ")
        if sep and body.startswith("{"):
            out.append((head + ">", json.loads(body)))
    return out


def marker_events(messages: list[str], marker: str, exe: str = DASH) -> list[tuple[str, dict]]:
    return [(pri, e) for pri, e in json_events(messages)
            if e.get("exe") == exe and any(marker in a for a in e.get("argv", []))]


def dispatcher_pids(root: Rootfs) -> list[int]:
    return [p for p in root.processes()
            if b"/var/lib/nodeaudit/dispatcher/dispatcher.py" in Path(f"/proc/{p}/cmdline").read_bytes()]


def apply_json(host, root: Rootfs, **spec: object) -> dict[str, Any]:
    bundle = hostlib.render_policy_bundle(host.bundle(uuid.uuid4().hex[:8]),
                                          policy_doc("procmon", list(PROCMON_RULES), volume="lean", **spec))
    res = root.run_bundle(bundle)
    assert res.rc == 0 and res.result is not None and res.result["ok"] is True, res
    return res.result


class Listener:
    """/dev/log read all the time, as a node's syslog daemon does: every exec on this machine is
    audited while the rules are loaded, and a datagram socket holds only 10 messages, so a listener
    that pauses makes the dispatcher drop (by design) the very event a test waits for."""

    def __init__(self, host, root: Rootfs):
        self.devlog = host.devlog(root)
        self.draining = costlib.Draining(self.devlog).__enter__()

    @property
    def messages(self) -> list[str]:
        return self.devlog.messages

    def wait_for(self, predicate, timeout: float = 10.0):
        return wait_for(lambda: predicate(list(self.devlog.messages)), timeout)

    def close(self) -> None:
        self.draining.__exit__()


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def in_root(root: Rootfs, *argv: str, preexec=None) -> subprocess.Popen[bytes]:
    """A process in the root without any wrapper that carries the marker (chroot only)."""
    return subprocess.Popen(["chroot", str(root.path), *argv], preexec_fn=preexec,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=kernel_guard.root_env())


@pytest.fixture
def pod(host):
    root = host.root("python")
    pod_uid = str(uuid.uuid4())
    container_id = uuid.uuid4().hex + uuid.uuid4().hex
    try:
        cgroup = KubeletCgroup(pod_uid, container_id)
    except CgroupUnavailable as exc:
        pytest.skip(str(exc))
    listener = Listener(host, root)
    try:
        yield root, cgroup, container_id, write_task_state(root, container_id, pod_uid), listener
    finally:
        listener.close()
        cgroup.close()


def test_container_exec_is_one_attributed_json_datagram_and_a_host_exec_gets_null(host, pod):
    root, cgroup, container_id, want, devlog = pod
    result = apply_json(host, root, redact=[r"--password[= ]\S+"])
    assert result["syslogFormat"] == "json" and result["fallback"] == ""
    assert (root / "etc/audit/plugins.d/nodeaudit.conf").exists()
    assert "active = no" in (root / "etc/audit/plugins.d/syslog.conf").read_text()
    assert dispatcher_pids(root)
    assert not [p for p in root.processes() if hostlib.comm(p) == "audisp-syslog"]

    marker = f"nodeaudit-marker-{uuid.uuid4().hex}"
    proc = in_root(root, "/bin/sh", "-c", "sleep 1", marker, preexec=cgroup.join)
    found = devlog.wait_for(lambda msgs: marker_events(msgs, marker), timeout=10)
    assert proc.wait(10) == 0
    time.sleep(1.0)
    events = marker_events(devlog.messages, marker)
    assert found and len(events) == 1, events
    pri, event = events[0]
    assert pri == "<86>"
    assert event["argv"] == ["/bin/sh", "-c", "sleep 1", marker]
    assert event["key"] == "procmon" and event["syscall"] == "execve" and event["success"] is True
    assert event["container"] == {"id": container_id, **want}
    # One message for the event: nothing else carries its serial, and no raw record came through.
    same = [e for _, e in json_events(devlog.messages) if e["serial"] == event["serial"] and e["ts"] == event["ts"]]
    assert len(same) == 1
    assert not any(marker in m and "type=" in m for m in devlog.messages)
    print("attributed container exec at lean:", next(m for m in devlog.messages if marker in m and DASH in m))

    host_marker = f"nodeaudit-marker-{uuid.uuid4().hex}"
    assert in_root(root, "/bin/sh", "-c", "sleep 1", host_marker).wait(10) == 0
    assert devlog.wait_for(lambda msgs: marker_events(msgs, host_marker), timeout=10)
    (_, host_event), = marker_events(devlog.messages, host_marker)
    assert host_event["container"] is None


def test_a_process_gone_before_the_lookup_is_attributed_through_its_parent(host, pod):
    root, cgroup, container_id, want, devlog = pod
    apply_json(host, root)
    (dispatcher,) = dispatcher_pids(root)
    marker = f"nodeaudit-marker-{uuid.uuid4().hex}"
    # The dispatcher is held still while the child runs and exits: when it reads the record, the
    # child's pid is gone for sure; its parent shell (same container) is still there.
    os.kill(dispatcher, signal.SIGSTOP)
    try:
        parent = in_root(root, "/bin/sh", "-c", f"/bin/echo {marker} >/dev/null; echo done >/tmp/child-done; sleep 3",
                         preexec=cgroup.join)
        assert wait_for(lambda: (root / "tmp/child-done").exists())
    finally:
        os.kill(dispatcher, signal.SIGCONT)
    found = devlog.wait_for(lambda msgs: marker_events(msgs, marker, exe="/usr/bin/echo"), timeout=10)
    assert found, devlog.messages[-5:]
    (_, event), = marker_events(devlog.messages, marker, exe="/usr/bin/echo")
    assert not Path(f"/proc/{event['pid']}").exists() or event["pid"] != parent.pid
    assert event["ppid"] == parent.pid
    assert event["container"] == {"id": container_id, **want}
    parent.wait(10)


def test_a_redacted_argument_never_appears_in_any_datagram(host, pod):
    root, cgroup, _, _, devlog = pod
    apply_json(host, root, redact=[r"--password[= ]\S+", r"token=\S+"])
    secret = f"s3cr3t{uuid.uuid4().hex}"
    marker = f"nodeaudit-marker-{uuid.uuid4().hex}"
    assert in_root(root, "/bin/sh", "-c", "exit 0", marker, "--password", secret, f"token={secret}",
                   preexec=cgroup.join).wait(10) == 0
    assert devlog.wait_for(lambda msgs: marker_events(msgs, marker), timeout=10)
    time.sleep(1.0)
    (_, event), = marker_events(devlog.messages, marker)
    assert event["argv"] == ["/bin/sh", "-c", "exit 0", marker, "<redacted>", "<redacted>", "<redacted>"]
    assert event["argvRedacted"] is True
    assert not any(secret in m or secret.encode().hex().upper() in m for m in devlog.messages)


def test_syslog_socket_gone_auditd_keeps_running_drops_are_counted_execs_never_wait(host, pod):
    root, _, _, _, listener = pod
    apply_json(host, root)
    auditd = int(host.audit.status()["pid"])
    (dispatcher,) = dispatcher_pids(root)
    listener.close()
    listener.devlog.close()  # the syslog daemon is gone: nothing listens at /dev/log any more
    before = host.audit.status()
    costlib.exec_loop(root, 300, program="/bin/true", marker="nodeaudit-drop")
    time.sleep(3)  # the dispatcher writes its counters every 2 s
    after = host.audit.status()
    assert int(after["pid"]) == auditd and dispatcher_pids(root) == [dispatcher]
    assert int(after["lost"]) == int(before["lost"])
    # The kernel's own count of time audited processes spent waiting for the backlog.
    assert int(after.get("backlog_wait_time_actual", 0)) == int(before.get("backlog_wait_time_actual", 0))
    state = json.loads((root / STATE).read_text())
    assert state["dropped"] >= 300 and state["running"] is True
    again = apply_json(host, root)
    assert again["message"] == "already applied"
    assert again["dispatcher"]["dropped"] >= 300 and again["dispatcher"]["events"] >= 300


def test_remove_takes_the_dispatcher_away_and_puts_syslog_conf_back(host, pod):
    root, _, _, _, _ = pod
    original = (root / "etc/audit/plugins.d/syslog.conf").read_bytes()
    result = apply_json(host, root)
    bundle_dir = root / f"var/lib/nodeaudit/bundles/{str(result['bundle']).split(':', 1)[1]}"
    assert dispatcher_pids(root)
    res = root.run("sh", f"/{bundle_dir.relative_to(root.path)}/apply.sh", "--remove")
    assert res.rc == 0, res
    assert json.loads(res.stdout.strip().splitlines()[-1])["ok"] is True
    assert not (root / "etc/audit/plugins.d/nodeaudit.conf").exists()
    assert not (root / "var/lib/nodeaudit/dispatcher").exists()
    assert (root / "etc/audit/plugins.d/syslog.conf").read_bytes() == original
    assert wait_for(lambda: not dispatcher_pids(root), timeout=5)


def test_without_python3_the_raw_path_runs_and_the_result_says_so(host):
    root = host.root()  # the auditd root without python3
    devlog = host.devlog(root)
    bundle = hostlib.render_policy_bundle(host.bundle("nopy"), policy_doc("procmon", list(PROCMON_RULES)))
    res = root.run_bundle(bundle)
    assert res.rc == 0 and res.result is not None and res.result["ok"] is True, res
    assert res.result["syslogFormat"] == "raw"
    assert "python3 not found" in str(res.result["fallback"])
    assert res.result["dispatcher"] is None
    assert not (root / "etc/audit/plugins.d/nodeaudit.conf").exists()
    marker = costlib.run_marker(root)
    assert devlog.wait_for(lambda msgs: costlib.find_exec_record(msgs, marker), timeout=10)
