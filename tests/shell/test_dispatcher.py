"""host/dispatcher.py as it runs on a node: its two files alone in a directory, the system python3
in isolated mode (no nodeaudit package), recorded auditd lines on stdin, a datagram socket as
/dev/log. The kernel, auditd and real cgroups are the host tests' part (tests/host/test_dispatcher_host.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeaudit.core import records
from nodeaudit.host import dispatcher

HOST = Path(dispatcher.__file__).parent
DATA = Path(__file__).resolve().parents[1] / "data" / "records"
V3 = (DATA / "auditd-3.0.9-plugin.log").read_bytes()
V28 = (DATA / "auditd-2.8-audispd.log").read_bytes()
CID = "a" * 64
POD_UID = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d"


@pytest.fixture
def node(tmp_path):
    """The dispatcher installed as apply.sh installs it: dispatcher.py and records.py side by side."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(HOST / "dispatcher.py", lib / "dispatcher.py")
    shutil.copy(Path(records.__file__), lib / "records.py")
    return lib


def listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536).decode())
        except (TimeoutError, BlockingIOError):
            return out


def run(lib: Path, tmp: Path, stdin: bytes, **config: object) -> tuple[subprocess.CompletedProcess[bytes], dict]:
    conf = {"socket": str(tmp / "log"), "stateFile": str(tmp / "state" / "dispatcher.json"),
            "containerdState": str(tmp / "containerd"), **config}
    (tmp / "config.json").write_text(json.dumps(conf))
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    proc = subprocess.run([python, "-I", str(lib / "dispatcher.py"), str(tmp / "config.json")],
                          input=stdin, capture_output=True, timeout=30)
    state = json.loads((tmp / "state" / "dispatcher.json").read_text())
    return proc, state


@pytest.mark.parametrize(("text", "want"), [
    ("12:pids:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b1c2d3e_4f50_4a6b_8c7d_9e0f1a2b3c4d.slice/"
     f"cri-containerd-{CID}.scope\n1:name=systemd:/\n", (CID, POD_UID)),
    ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b1c2d3e_4f50_4a6b_8c7d_9e0f1a2b3c4d.slice/"
     f"cri-containerd-{CID}.scope\n", (CID, POD_UID)),
    (f"4:memory:/kubepods/burstable/pod{POD_UID}/{CID}\n", (CID, POD_UID)),
    (f"0::/kubepods/pod{POD_UID}/{CID}\n", (CID, POD_UID)),
    (f"0::/system.slice/docker-{CID}.scope\n", (CID, None)),
    ("0::/system.slice/containerd.service\n", None),
    ("12:pids:/\n0::/user.slice/user-0.slice/session-1.scope\n", None),
    ("garbage\n", None),
])
def test_cgroup_layouts(text, want):
    assert dispatcher.cgroup_container(text) == want


def fake_proc(root: Path, pids: dict[int, tuple[int, str]], btime: int = 1_700_000_000,
              zombies: tuple[int, ...] = ()) -> Path:
    """A /proc tree for the cache and reuse rules: {pid: (start ticks, cgroup text)}."""
    (root).mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(f"cpu 0 0 0\nbtime {btime}\n")
    for pid, (start, cgroup) in pids.items():
        (root / str(pid)).mkdir()
        fields = ["Z" if pid in zombies else "S"] + ["0"] * 18 + [str(start)] + ["0"] * 10
        (root / str(pid) / "stat").write_text(f"{pid} (a b) " + " ".join(fields) + "\n")
        (root / str(pid) / "cgroup").write_text(cgroup)
    return root


def task_state(state: Path, cid: str = CID, **notes: str) -> None:
    directory = state / "k8s.io" / cid
    directory.mkdir(parents=True)
    annotations = {"io.kubernetes.cri.container-name": "app", "io.kubernetes.cri.sandbox-name": "web-0",
                   "io.kubernetes.cri.sandbox-namespace": "shop", "io.kubernetes.cri.sandbox-uid": POD_UID,
                   "io.kubernetes.cri.image-name": "ghcr.io/acme/web:1.2", **notes}
    (directory / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": annotations}))


CONTAINER_CG = f"0::/kubepods/besteffort/pod{POD_UID}/{CID}\n"


def test_attribution_cache_reuse_and_parent_fallback(tmp_path):
    tick = os.sysconf("SC_CLK_TCK")
    proc = fake_proc(tmp_path / "proc", {100: (10 * tick, CONTAINER_CG), 200: (50 * tick, "0::/\n"),
                                         300: (5000 * tick, "0::/\n"), 400: (10 * tick, "0::/\n")},
                     zombies=(400,))
    task_state(tmp_path / "containerd")
    att = dispatcher.Attributor({**dispatcher.DEFAULTS, "proc": str(proc),
                                 "containerdState": str(tmp_path / "containerd"), "cacheSize": 2})
    when = 1_700_000_000 + 100
    assert att.resolve(100, 1, when) == (True, {"id": CID, "name": "app", "pod": "web-0", "namespace": "shop",
                                                 "podUid": POD_UID, "image": "ghcr.io/acme/web:1.2"})
    assert att.resolve(200, 1, when) == (True, None)
    # pid 300 started long after the event: a reused pid, so its parent (100) answers.
    assert att.resolve(300, 100, when)[1]["pod"] == "web-0"
    # An exited process not yet reaped (a zombie) is gone too: its parent answers, not its empty cgroup.
    assert att.resolve(400, 100, when)[1]["pod"] == "web-0"
    # gone: parent answers; neither: not answered.
    assert att.resolve(999, 100, when)[1]["pod"] == "web-0"
    assert att.resolve(999, 998, when) == (False, None)
    assert len(att.by_pid) <= 2
    # The cache key has the start time: a new process on pid 100 (host) is not the old one's pod.
    shutil.rmtree(proc / "100")
    fake_proc(proc, {100: (20 * tick, "0::/\n")})
    assert att.resolve(100, 1, when) == (True, None)


def test_container_without_task_state_is_partial(tmp_path):
    att = dispatcher.Attributor({**dispatcher.DEFAULTS, "containerdState": str(tmp_path / "none")})
    assert att.container(CID, POD_UID) == {"id": CID, "unresolved": True, "podUid": POD_UID}


def test_one_datagram_per_event_at_facility_and_priority(node, tmp_path):
    sock = listener(tmp_path / "log")
    proc, state = run(node, tmp_path, V3 + V28 + b"not a record\n", facility="LOG_LOCAL3", priority="LOG_NOTICE",
                      redact=[r"--password[= ]\S+"])
    assert proc.returncode == 0, proc.stderr
    got = drain(sock)
    want = [e for e in records.events((V3 + V28).decode().rstrip("\n").split("\n"))]
    assert len(got) == len(want) + 1
    pri = 19 * 8 + 5
    assert all(m.startswith(f"<{pri}>nodeaudit: ") for m in got)
    bodies = [m.split("nodeaudit: ", 1)[1] for m in got]
    assert "not a record" in bodies
    events = [json.loads(b) for b in bodies if b.startswith("{")]
    echo = next(e for e in events if e["serial"] == 52)
    assert echo["argv"] == ["/bin/echo", "hello world", "plain", "été", 'q"uote']
    assert not any("hunter2" in m for m in got)
    assert state["events"] == len(want) and state["unparsed"] == 1 and state["dropped"] == 0
    assert state["sent"] == len(got) and state["running"] is False
    # pids of the recorded lines are long gone here (or someone else's): never a guess of "host".
    assert echo["container"] == {"id": None, "unresolved": True}


def test_no_syslog_socket_drops_counts_and_never_waits(node, tmp_path):
    start = time.monotonic()
    proc, state = run(node, tmp_path, V3 * 50)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 20
    assert state["dropped"] == state["events"] > 0 and state["sent"] == 0


def test_a_syslog_that_does_not_read_drops_instead_of_blocking(node, tmp_path):
    sock = listener(tmp_path / "log")  # never read until the end: its queue fills
    lines = []
    for serial in range(5000):
        lines.append(f'type=SYSCALL msg=audit(1700000000.000:{serial}): arch=c000003e syscall=59 success=yes exit=0 '
                     f'ppid=1 pid=1 auid=4294967295 uid=0 euid=0 tty=(none) ses=4294967295 comm="x" exe="/x" key="k"')
        lines.append(f"type=EOE msg=audit(1700000000.000:{serial}): ")
    proc, state = run(node, tmp_path, ("\n".join(lines) + "\n").encode())
    assert proc.returncode == 0, proc.stderr
    received = len(drain(sock))
    assert state["events"] == 5000
    assert state["dropped"] > 0 and state["sent"] + state["dropped"] == 5000
    assert received == state["sent"]


def test_bad_config_is_one_line_and_exit_2(node, tmp_path):
    (tmp_path / "config.json").write_text('{"facility": "LOG_NOPE"}')
    proc = subprocess.run([sys.executable, "-I", str(node / "dispatcher.py"), str(tmp_path / "config.json")],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "LOG_NOPE" in proc.stderr


def test_a_canary_it_sends_is_named_in_its_state(node, tmp_path):
    """apply.sh's canary (an audit user message) goes to syslog like any event, and the state file
    names it at once: what apply.sh reads to confirm on the node that it left the audit pipeline."""
    from nodeaudit.core import delivery

    canary = "aks-user-12345678-vmss000003:0123456789ab:1800000000-4242"
    line = (f"type=USER msg=audit(1800000000.120:77): pid=4242 uid=0 auid=4294967295 ses=4294967295 "
            f"subj=unconfined msg='text=nodeaudit-canary id={canary} policy=procmon exe=\"/usr/sbin/auditctl\" "
            f"hostname=? addr=? terminal=? res=success'UID=\"root\" AUID=\"unset\"\n").encode()
    sock = listener(tmp_path / "log")
    proc, state = run(node, tmp_path, V3 + line)
    assert proc.returncode == 0, proc.stderr
    got = [m for m in drain(sock) if f"nodeaudit-canary id={canary}" in m]
    assert len(got) == 1 and delivery.CANARY_RE.search(got[0]).group(1) == canary
    assert state["lastCanary"] == canary
    assert dispatcher.CANARY.pattern.split(" policy=")[0] == delivery.CANARY_RE.pattern.split(" policy=")[0]
