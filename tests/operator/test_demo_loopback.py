"""`nodeaudit demo` stays on loopback, whatever policy is applied during it.

The demo runs in a network namespace that holds only `lo` (`unshare --net`), so nothing can leave
the machine even by accident, and under a Python audit hook on every connect(), sendto() and name
lookup that aborts (and records) any attempt at a non-loopback destination, so such an attempt
fails this test loudly instead of timing out quietly. While it runs, a second policy without
`monitoringAgent` (so the default scale-set check, which once started azure-identity's whole
DefaultAzureCredential chain and reached 169.254.169.254) is created with the real kubectl (with
the kubernetes client where kubectl is not installed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import REPO

# Runs in the namespace: brings lo up (a new namespace has it down), installs the hook, runs the CLI.
GUARD = textwrap.dedent('''
    import fcntl, ipaddress, json, socket, struct, sys

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))

    log = open(sys.argv[1], "a", buffering=1)

    def loopback(host):
        if isinstance(host, bytes):
            host = host.decode()
        if host in (None, "", "localhost"):
            return True
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False  # a name other than localhost: resolving it already reaches out

    def hook(event, args):
        if event in ("socket.connect", "socket.sendto"):
            address = args[1]
            if not isinstance(address, tuple):  # AF_UNIX and the like stay on the machine
                return
            host, port = address[0], address[1]
        elif event == "socket.getaddrinfo":
            host, port = args[0], args[1]
        else:
            return
        ok = loopback(host)
        log.write(json.dumps({"event": event, "host": str(host), "port": port, "loopback": ok}) + "\\n")
        if not ok:
            raise PermissionError(f"demo loopback guard: {event} to {host!r} port {port} refused")

    sys.addaudithook(hook)
    if sys.argv[2] == "--probe":  # the guard's own check: attempts it must refuse and record
        for attempt in (lambda: socket.socket().connect(("192.0.2.1", 443)),
                        lambda: socket.getaddrinfo("management.azure.com", 443),
                        lambda: socket.socket().connect(("127.0.0.1", 9))):
            try:
                attempt()
            except OSError as e:  # PermissionError from the guard; nothing listens on 127.0.0.1:9
                print(type(e).__name__, e)
        sys.exit(0)
    from nodeaudit.cli.main import main
    sys.argv = ["nodeaudit", *sys.argv[2:]]
    main()
''')

SECOND = textwrap.dedent("""\
    apiVersion: nodeaudit.io/v1alpha1
    kind: NodeAuditPolicy
    metadata:
      name: second
    spec:
      rules:
      - -w /etc/passwd -p wa -k passwd
""")


def _sigint_as_in_a_terminal() -> None:
    # A background job (CI, nohup, `cmd &`) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: the Ctrl-C below must reach the demo as it does in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _attempts(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def netns_guard(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("unshare and nsenter (util-linux) are needed")
    if os.geteuid() != 0:
        pytest.skip("a network namespace needs root (unshare --net)")
    guard = tmp_path / "guard.py"
    guard.write_text(GUARD)
    return guard, tmp_path / "connections.jsonl"


def test_the_guard_refuses_and_records_a_non_loopback_attempt(netns_guard: tuple[Path, Path]) -> None:
    guard, log = netns_guard
    out = subprocess.run(["unshare", "--net", "--", sys.executable, str(guard), str(log), "--probe"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "PermissionError demo loopback guard: socket.connect to '192.0.2.1' port 443 refused",
        "PermissionError demo loopback guard: socket.getaddrinfo to 'management.azure.com' port 443 refused",
        "ConnectionRefusedError [Errno 111] Connection refused"], out.stdout
    assert _attempts(log) == [
        {"event": "socket.connect", "host": "192.0.2.1", "port": 443, "loopback": False},
        {"event": "socket.getaddrinfo", "host": "management.azure.com", "port": 443, "loopback": False},
        {"event": "socket.connect", "host": "127.0.0.1", "port": 9, "loopback": True}]


def _in_netns(pid: int, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", *cmd], capture_output=True, text=True,
                          timeout=timeout)


# Where kubectl is missing (a fresh Debian has none), the same two requests from the kubernetes client.
CLIENT = textwrap.dedent('''
    import json, sys, yaml, kubernetes
    kubernetes.config.load_kube_config(config_file=sys.argv[1])
    api = kubernetes.client.CustomObjectsApi()
    if sys.argv[2] == "create":
        api.create_cluster_custom_object("nodeaudit.io", "v1alpha1", "nodeauditpolicies",
                                         yaml.safe_load(open(sys.argv[3])))
    else:
        print(json.dumps(api.get_cluster_custom_object("nodeaudit.io", "v1alpha1", "nodeauditpolicies", sys.argv[3])))
''')


def _kubectl(pid: int, kubeconfig: str, verb: str, arg: str) -> subprocess.CompletedProcess[str]:
    """`kubectl create -f FILE` / `kubectl get nap NAME -o json`, in the demo's network namespace."""
    if shutil.which("kubectl") is None:
        return _in_netns(pid, sys.executable, "-c", CLIENT, kubeconfig, verb, arg)
    if verb == "create":
        return _in_netns(pid, "kubectl", "--kubeconfig", kubeconfig, "create", "--validate=false", "-f", arg)
    return _in_netns(pid, "kubectl", "--kubeconfig", kubeconfig, "get", "nodeauditpolicies", arg, "-o", "json")


def _agent_ready(pid: int, kubeconfig: str, policy: str) -> dict[str, str] | None:
    got = _kubectl(pid, kubeconfig, "get", policy)
    if got.returncode != 0:
        return None
    conds = {c["type"]: c for c in (json.loads(got.stdout).get("status") or {}).get("conditions") or []}
    agent = conds.get("AgentReady")
    return agent if agent and agent.get("reason") != "Checking" else None


def test_demo_with_a_second_policy_never_leaves_loopback(netns_guard: tuple[Path, Path], tmp_path: Path) -> None:
    guard, log = netns_guard
    second = tmp_path / "second.yaml"
    second.write_text(SECOND)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODEAUDIT_ARM_", "AZURE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(["unshare", "--net", "--", sys.executable, str(guard), str(log), "demo",
                             "--keep-running", "--nodes-per-pool", "2", "--metrics-port", "-1"],
                            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=_sigint_as_in_a_terminal)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        kubeconfig = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"KUBECONFIG=(\S+?)\)", line)
            kubeconfig = m.group(1) if m else kubeconfig
            if "still serving" in line:
                break
        out = "".join(lines)
        assert "still serving" in out, out
        # the three layers against the local emulators: user2's scale set has no agent and the add-on
        # is off, so AgentReady is False naming it with the fix, and Delivered names user2's nodes
        assert "aks-user2-30000003-vmss Missing" in out, out  # the agent layer: no extension there
        assert "AgentReady=False (NoCollectionPath)" in out and "aks-user2-30000003-vmss" in out, out
        assert "az aks enable-addons" in out, out
        assert "Delivered=False (CanariesMissing)" in out and "aks-user2-30000003-vmss000000" in out, out
        assert "aks-user1-20000002-vmss000000" not in out.split("Delivered=False", 1)[1].split("\n", 1)[0], out

        created = _kubectl(proc.pid, kubeconfig, "create", str(second))
        assert created.returncode == 0, created.stderr
        agent = None
        deadline = time.monotonic() + 60
        while agent is None and time.monotonic() < deadline:
            time.sleep(0.5)
            agent = _agent_ready(proc.pid, kubeconfig, "second")
        assert agent is not None, "the second policy got no AgentReady verdict"
        # The default check (Auto) ran against the local endpoint: a verdict about the cluster's
        # add-on and the scale sets, no token dump.
        assert (agent["status"], agent["reason"]) == ("False", "NoCollectionPath"), agent
        assert "aks-demo" in agent["message"] and "Traceback" not in agent["message"], agent
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdout is not None:
            lines.append(proc.stdout.read())
    attempts = _attempts(log)
    outside = [a for a in attempts if not a["loopback"]]
    assert outside == [], f"the demo tried to reach past loopback: {outside}\n{''.join(lines)[-3000:]}"
    # The guard saw the traffic it is there for: the operator's ARM calls and API requests.
    assert sum(1 for a in attempts if a["event"] == "socket.connect") >= 3, attempts
    assert proc.returncode == 130, "".join(lines)[-2000:]
