"""`nodeaudit demo`: the whole story on one machine, in about ten seconds.

Why: a platform team should see what the operator does before giving it a cluster. The demo
starts the local API server (kmock-based, 127.0.0.1 only), registers the CRD, creates simulated
AKS nodes (three VMSS pools with realistic labels, providerIDs and bootIDs, one Windows node,
one pool gated by the ``nodeaudit.io/unconfigured`` taint), runs the real operator (the same
handlers ``nodeaudit run`` uses), applies the example policy, plays kubelet and the Job controller,
shows progress until every node is configured, then prints a per-node table. With ``--real-host``
one node's Job runs for real on a Debian root filesystem (see ``realhost.py``).

The monitoring-agent check is real too: the operator's Azure SDK clients talk to a local https ARM
endpoint on 127.0.0.1 (``armserver.py``, a trustme test CA the clients trust, a bearer token in a
file), seeded from the demo's own scale sets (the Azure Monitor Agent on two pools, none on user2), a
cluster without the Container Insights add-on but with a syslog DCR associated, and a Log Analytics
workspace that receives the canaries of every node that has an agent: the demo shows ``AgentReady=False``
naming user2's scale set and the command that fixes it, and ``Delivered=False`` naming user2's nodes. The operator's ARM settings are pointed there for the whole
run, so no policy applied during the demo (the example, or another one with kubectl) reaches past
loopback: no DefaultAzureCredential chain, no instance metadata address, no management.azure.com.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes

from nodeaudit.controller.config import DEFAULT_NAMESPACE
from nodeaudit.core import documents
from nodeaudit.core import nodes as nodes_mod
from nodeaudit.hostaudit.guard import KernelAuditError
from nodeaudit.testing import simulator as sim_mod
from nodeaudit.testing.runtime import OperatorThread, ServerThread

NAMESPACE = os.environ.get("NODEAUDIT_NAMESPACE") or DEFAULT_NAMESPACE
# examples/procmon.yaml, shipped with the package (a test keeps the two the same).
DEFAULT_POLICY = Path(__file__).resolve().parent / "data" / "procmon.yaml"
GATE = {"key": "nodeaudit.io/unconfigured", "value": "true", "effect": "NoSchedule"}
POOLS: list[tuple[str, str, list[dict[str, str]] | None, str]] = [
    ("system", "system", None, "10000001"), ("user1", "user", None, "20000002"),
    ("user2", "user", [GATE], "30000003")]


def _crd() -> dict[str, Any]:
    """The CRD, generated from the policy model (what crds/nodeauditpolicy.yaml holds)."""
    from nodeaudit.core.crd import crd

    return crd()


def _policy(path: str | None) -> dict[str, Any]:
    """The policy to apply, checked like ``nodeaudit render`` checks it (the exact problem, e.g.
    ``spec.rules[0]: unknown syscall "execvee" for arch b64``, and exit 2: never a traceback)."""
    candidates = [Path(path)] if path else [DEFAULT_POLICY]
    for candidate in candidates:
        if candidate.exists():
            try:
                doc = json.loads(json.dumps(documents.single_policy(str(candidate), None).raw))
            except documents.LoadError as e:
                print(f"nodeaudit demo: {e}", file=sys.stderr)
                raise SystemExit(2) from None
            return dict(doc)
    print(f"nodeaudit demo: policy file not found: {candidates[0]}", file=sys.stderr)
    raise SystemExit(2)


#: The demo's scale sets and the extensions the local ARM endpoint gives each: the system and user1
#: pools carry the Azure Monitor Agent, user2 none (what an AKS pool has without monitoring).
AGENT_BY_POOL = {"system": True, "user1": True, "user2": False}
ARM_ENV = ("NODEAUDIT_ARM_ENDPOINT", "NODEAUDIT_ARM_TOKEN_FILE", "NODEAUDIT_ARM_CA_FILE", "NODEAUDIT_LOGS_ENDPOINT")
#: The pool whose canaries never reach the workspace: it has no agent, so AgentReady=False names its
#: scale set and Delivered=False names its nodes, the two layers telling one story.
LOST_POOL = "user2"


@contextmanager
def local_arm() -> Iterator[Any]:
    """The local https ARM endpoint, seeded from POOLS, with the operator's ARM settings
    (endpoint, token file, CA) pointed at it for as long as the demo runs, then put back."""
    try:
        from nodeaudit.testing import armserver
    except ImportError as e:  # trustme is a test/demo dependency, not the operator's
        print(f"nodeaudit demo: needs {e.name} for its local ARM endpoint (pip install trustme)", file=sys.stderr)
        raise SystemExit(2) from None

    old = {k: os.environ.get(k) for k in ARM_ENV}
    with tempfile.TemporaryDirectory(prefix="nodeaudit-demo-arm-") as tmp, armserver.running_arm_server(tmp) as arm:
        for pool, _mode, _taints, suffix in POOLS:
            vmss = f"aks-{pool}-{suffix}-vmss"
            arm.extensions[vmss] = armserver.aks_extensions() + ([armserver.ama()] if AGENT_BY_POOL[pool] else [])
        # the cluster and its associated syslog DCR, the workspace's Syslog table; the Container Insights
        # add-on off, so the scale sets' agents are the only way records leave the nodes
        armserver.seed_aks(arm, sim_mod.SUBSCRIPTION, sim_mod.NODE_RG)
        arm.clusters["aks-demo"] = armserver.Resp(200, armserver.managed_cluster(
            sim_mod.SUBSCRIPTION, "rg-demo", "aks-demo", sim_mod.NODE_RG, addon=False))
        token = Path(tmp) / "arm-token"
        token.write_text(arm.token + "\n")
        os.environ.update({"NODEAUDIT_ARM_ENDPOINT": arm.endpoint, "NODEAUDIT_ARM_TOKEN_FILE": str(token),
                           "NODEAUDIT_ARM_CA_FILE": arm.ca_file, "NODEAUDIT_LOGS_ENDPOINT": arm.endpoint})
        try:
            yield arm
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _agent_line(policy: dict[str, Any], kind: str = "AgentReady", pending: tuple[str, ...] = ("Checking",)) -> str | None:
    conds = {c["type"]: c for c in (policy.get("status") or {}).get("conditions") or []}
    agent = conds.get(kind)
    if not agent or agent.get("reason") in pending:
        return None
    return f"  {kind}={agent.get('status')} ({agent.get('reason', '')}): {agent.get('message', '')}"


def _with_workspace(policy: dict[str, Any], arm: Any) -> Callable[[str, str, int], None]:
    """The demo's arrival check: the policy names the local workspace and is checked every few
    seconds; the returned hook is each simulated node's agent, shipping its canary to Syslog."""
    from nodeaudit.testing import armserver

    agent = policy.setdefault("spec", {}).setdefault("monitoringAgent", {})
    agent.setdefault("workspaceResourceId", armserver.WORKSPACE_ID)
    agent.update(interval="5s", deliveryGrace="4s")
    lost = next(f"aks-{p}-{sfx}-vmss" for p, _m, _t, sfx in POOLS if p == LOST_POOL)
    name = policy["metadata"]["name"]

    def ship(node: str, canary: str, at: int) -> None:
        if not node.startswith(lost):
            arm.ship_canary(str(agent["workspaceResourceId"]), node, canary, name, at)

    print(f"  Log Analytics {arm.endpoint} (local; pool {LOST_POOL} has no agent, so its nodes ship nothing)")
    return ship


def _status_line(policy: dict[str, Any]) -> str:
    st = policy.get("status") or {}
    n = st.get("nodes") or {}
    conds = {c["type"]: c for c in st.get("conditions") or []}
    ready = conds.get("Ready")
    if not ready:
        return "  waiting for the operator (no status yet)"
    return (f"  matched {n.get('matched', 0):3}  configured {n.get('configured', 0):3}  applying "
            f"{n.get('applying', 0):3}  failed {n.get('failed', 0):3}   Ready={ready.get('status', '?')}"
            f" ({ready.get('reason', '')})")


def _short(text: Any, limit: int = 60) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _table(core: Any, api: Any, policy_name: str, selector: dict[str, Any] | None = None) -> str:
    rows: list[tuple[str, ...]] = [("NODE", "POOL", "OS", "RESULT", "BUNDLE", "DISTRO", "AUDIT", "GATE TAINT", "ERROR")]
    for node in sorted(core.list_node().items, key=lambda n: n.metadata.name):
        raw = api.sanitize_for_serialization(node)
        rows.append(_row(raw, policy_name, selector or {}))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _row(raw: dict[str, Any], policy_name: str, selector: dict[str, Any]) -> tuple[str, ...]:
    """One node's line: its record, or why it has none (not eligible, not selected, pending)."""
    labels = raw["metadata"].get("labels") or {}
    ann = (raw["metadata"].get("annotations") or {}).get(f"nodeaudit.io/{policy_name}")
    rec = json.loads(ann) if ann else {}
    tainted = any(t.get("key") == GATE["key"] for t in raw["spec"].get("taints") or [])
    os_name = labels.get("kubernetes.io/os", "")
    kind = "virtual" if labels.get("type") == "virtual-kubelet" else os_name
    if rec:
        result = str(rec.get("result", "-"))
    elif not nodes_mod.facts_from_node(raw).eligible:
        result = "-"
    elif not nodes_mod.matches(selector, labels):
        result = "not selected"
    else:
        result = "pending"
    error = _short(rec.get("error")) if rec.get("result") == "failed" else ""
    return (raw["metadata"]["name"], labels.get("kubernetes.azure.com/agentpool", "-"), kind, result,
            (rec.get("bundle") or "-").replace("sha256:", "")[:12], str(rec.get("distro", "-")),
            str(rec.get("auditVersion", "-")), "yes" if tainted else "no", error)


def _report(server: ServerThread, sim: Any, core: Any, api: Any, name: str, policy: dict[str, Any]) -> str:
    """The per-node table and the counters, read afresh from the API server."""
    assert server.server is not None
    try:
        current = server.call(lambda: server.server.get(  # type: ignore[union-attr]
            ("nodeaudit.io", "v1alpha1", "nodeauditpolicies"), None, name))
    except Exception:  # noqa: BLE001 - the table is still worth showing
        current = None
    spec = (current or policy).get("spec") or {}
    ops = server.call(lambda: sum(1 for e in server.server.log  # type: ignore[union-attr]
                                  if e.agent in ("kopf", "nodeaudit")))
    writes = server.call(lambda: sum(1 for e in server.server.log  # type: ignore[union-attr]
                                     if e.agent in ("kopf", "nodeaudit")
                                     and e.verb in ("create", "patch", "update", "delete")))
    jobs = server.call(lambda: len(server.server.list(("batch", "v1", "jobs"), NAMESPACE)))  # type: ignore[union-attr]
    return (_table(core, api, name, spec.get("nodeSelector") or {}) + "\n\n" +
            (_status_line(current) + "\n" if current else "") +
            f"  operator API requests: {ops} ({writes} writes); Jobs run: {sim.started}; Jobs in {NAMESPACE}: {jobs}")


def _without_requests(report: str) -> str:
    return re.sub(r"operator API requests: \d+ \(\d+ writes\); ", "", report)


def run_demo(*, nodes_per_pool: int = 3, policy_path: str | None = None, fail_nodes: set[str] | None = None,
             keep_running: bool = False, port: int | None = None, timeout: float = 120,
             metrics_port: int | None = 0, real_host: bool = False, refresh: float = 5.0) -> int:
    if not real_host:
        return _run(nodes_per_pool=nodes_per_pool, policy_path=policy_path, fail_nodes=fail_nodes,
                    keep_running=keep_running, port=port, timeout=timeout, metrics_port=metrics_port,
                    refresh=refresh)
    from nodeaudit.testing import realhost

    policy = _policy(policy_path)  # a bad path fails before the kernel is touched
    # SIGTERM (a test's timeout, systemd, kill) restores kernel audit like Ctrl-C does.
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    host = realhost.RealHost(progress=lambda line: print(line, flush=True))
    try:
        print("nodeaudit demo --real-host: one node's Job runs for real (Debian 12 root, this kernel's audit)",
              flush=True)
        try:
            host.open()
        except KernelAuditError as e:  # RealHostError included
            print(f"nodeaudit demo --real-host: refusing: {e}", file=sys.stderr)
            return 2
        real_node = sim_mod.aks_node("user1", 0, mode="user", vmss_suffix=POOLS[1][3])["metadata"]["name"]
        if not nodes_mod.matches(policy["spec"].get("nodeSelector") or {}, _labels_of(real_node)):
            real_node = sim_mod.aks_node("system", 0, mode="system", vmss_suffix=POOLS[0][3])["metadata"]["name"]
        print(f"  real host: node {real_node} runs job-entry.sh in {host.root} "
              "(chroot; kernel-audit lock held until exit)", flush=True)
        return _run(nodes_per_pool=nodes_per_pool, policy_path=policy_path, fail_nodes=fail_nodes,
                    keep_running=keep_running, port=port, timeout=timeout, metrics_port=metrics_port,
                    real=(host, real_node), refresh=refresh)
    except KeyboardInterrupt:
        print("\n  interrupted; restoring kernel audit", file=sys.stderr)
        return 130
    finally:
        problems = host.close()
        signal.signal(signal.SIGTERM, old_term)
        if problems:
            print("  real host: teardown found: " + "; ".join(problems), file=sys.stderr)
        elif host.root is not None:
            print("  real host: kernel audit restored (rules flushed, enabled flag and limits as found, auditd stopped)", flush=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _labels_of(node_name: str) -> dict[str, str]:
    for pool, mode, _, suffix in POOLS:
        node = sim_mod.aks_node(pool, 0, mode=mode, vmss_suffix=suffix)
        if node["metadata"]["name"] == node_name:
            return dict(node["metadata"]["labels"])
    return {}


def _run(*, nodes_per_pool: int, policy_path: str | None, fail_nodes: set[str] | None, keep_running: bool,
         port: int | None, timeout: float, metrics_port: int | None,
         real: tuple[Any, str] | None = None, refresh: float = 5.0) -> int:
    policy = _policy(policy_path)
    print("nodeaudit demo: local API server on 127.0.0.1, simulated AKS cluster, the real operator")
    with local_arm() as arm:
        without = ", ".join(f"aks-{p}-{sfx}-vmss" for p, _m, _t, sfx in POOLS if not AGENT_BY_POOL[p])
        print(f"  ARM endpoint {arm.endpoint} (local https, test CA; no monitoring agent on {without})")
        ship = _with_workspace(policy, arm)
        return _run_cluster(policy, nodes_per_pool=nodes_per_pool, fail_nodes=fail_nodes,
                            keep_running=keep_running, port=port, timeout=timeout, metrics_port=metrics_port,
                            real=real, on_canary=ship, refresh=refresh)


def _run_cluster(policy: dict[str, Any], *, nodes_per_pool: int, fail_nodes: set[str] | None, keep_running: bool,
                 port: int | None, timeout: float, metrics_port: int | None, real: tuple[Any, str] | None,
                 on_canary: Callable[[str, str, int], None] | None = None, refresh: float = 5.0) -> int:
    name = policy["metadata"]["name"]
    try:
        server = ServerThread([_crd()], port=port).start()
    except OSError as e:
        print(f"nodeaudit demo: --port {port}: {e.strerror}", file=sys.stderr)
        return 1
    operator: OperatorThread | None = None
    metrics_server: Any = None
    old_kubeconfig = os.environ.get("KUBECONFIG")
    try:
        os.environ["KUBECONFIG"] = server.kubeconfig_path
        assert server.server is not None
        sim = server.call(lambda: sim_mod.NodeSimulator(server.server, delay=0.4, jitter=0.8).attach())  # type: ignore[arg-type]
        sim.fail_nodes = set(fail_nodes or ())
        sim.on_canary = on_canary
        if real is not None:
            sim.real_run, sim.real_nodes = real[0].run_job, {real[1]}
        api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=server.url))
        core = kubernetes.client.CoreV1Api(api)
        custom = kubernetes.client.CustomObjectsApi(api)
        core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=NAMESPACE)))
        nodes = [sim_mod.aks_node(pool, i, mode=mode, taints=taints, vmss_suffix=suffix)
                 for pool, mode, taints, suffix in POOLS for i in range(nodes_per_pool)]
        for node in [*nodes, sim_mod.aks_node("win1", 0, os_name="windows", mode="user")]:
            core.create_node(node)  # type: ignore[arg-type]  # the client sends a dict body as it is
        print(f"  API server {server.url}  (KUBECONFIG={server.kubeconfig_path})")
        print(f"  nodes: 3 pools x {nodes_per_pool} Linux (pool user2 gated by {GATE['key']}) + 1 Windows")
        if metrics_port is not None:
            from nodeaudit.controller import metrics

            try:
                metrics_server = metrics.serve(metrics_port, "127.0.0.1")
            except OSError as e:
                print(f"nodeaudit demo: --metrics-port {metrics_port}: cannot listen on 127.0.0.1:{metrics_port}: "
                      f"{e.strerror or e}", file=sys.stderr)
                return 1
            print(f"  metrics: http://127.0.0.1:{metrics_server.server_port}/metrics")
        operator = OperatorThread(NAMESPACE).start()
        custom.create_cluster_custom_object("nodeaudit.io", "v1alpha1", "nodeauditpolicies", policy)
        print(f"  applied NodeAuditPolicy/{name} (selector {policy['spec'].get('nodeSelector') or 'all Linux'})")
        deadline = time.monotonic() + timeout
        last = ""
        ready = False
        obj: Any = {}
        while time.monotonic() < deadline:
            obj = custom.get_cluster_custom_object("nodeaudit.io", "v1alpha1", "nodeauditpolicies", name)
            line = _status_line(obj)
            if line != last:
                print(line, flush=True)
                last = line
            conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
            ready = conds.get("Ready", {}).get("status") == "True"
            if ready or conds.get("Stalled", {}).get("status") == "True":
                break
            time.sleep(0.3)
        # AgentReady comes from its own loop (ARM calls): show its verdict once it has one.
        agent_line = _agent_line(obj)
        while agent_line is None and time.monotonic() < deadline:
            time.sleep(0.3)
            obj = custom.get_cluster_custom_object("nodeaudit.io", "v1alpha1", "nodeauditpolicies", name)
            agent_line = _agent_line(obj)
        scale_sets = (obj.get("status") or {}).get("agent") or []
        if scale_sets:  # the agent layer: what each scale set carries
            print("  scale sets: " + "; ".join(f"{s.get('scaleSet')} {s.get('state')}"
                                               f"{' (' + s['agent'] + ')' if s.get('agent') else ''}" for s in scale_sets))
        print(agent_line or "  AgentReady: no verdict yet")
        # Delivered: the canaries in the workspace, once the grace period has passed
        delivered = None
        while delivered is None and time.monotonic() < deadline:
            obj = custom.get_cluster_custom_object("nodeaudit.io", "v1alpha1", "nodeauditpolicies", name)
            delivered = _agent_line(obj, "Delivered", ("NoCanary", "Waiting"))
            if delivered is None:
                time.sleep(0.3)
        print(delivered or "  Delivered: no verdict yet")
        print()
        shown = _report(server, sim, core, api, name, policy)
        print(shown)
        if real is not None:
            raw = api.sanitize_for_serialization(core.read_node(real[1]))  # type: ignore[no-untyped-call]
            record = (raw["metadata"].get("annotations") or {}).get(f"nodeaudit.io/{name}")
            print(f"  real host: {real[1]} record: {record}")
        if keep_running:
            print(f"  still serving; try: KUBECONFIG={server.kubeconfig_path} kubectl get nap,nodes,jobs -A")
            print("  the table is printed again whenever it changes; Ctrl-C to stop", flush=True)
            while True:
                time.sleep(refresh)
                # The policy may have been edited or nodes added (kubectl apply): show what is true now.
                current = _report(server, sim, core, api, name, policy)
                # The request counter moves with every periodic check: only the rest is news.
                if _without_requests(current) != _without_requests(shown):
                    print(f"\n  {time.strftime('%H:%M:%S')} (changed)\n{current}", flush=True)
                    shown = current
        if not ready:
            conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
            worst = conds["Stalled"] if conds.get("Stalled", {}).get("status") == "True" else conds.get("Ready")
            reason = (f"{worst['type']}={worst['status']} ({worst.get('reason', '')}) after {timeout:g} s"
                      f"{': ' + _short(worst.get('message'), 200) if worst.get('message') else ''}"
                      if worst else f"no status after {timeout:g} s")
            print(f"  policy {name} did not become Ready: {reason}", file=sys.stderr)
        return 0 if ready else 1
    except KeyboardInterrupt:
        print("\n  interrupted; stopping", file=sys.stderr)
        return 130
    finally:
        if operator is not None:
            operator.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        server.stop()
        if old_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old_kubeconfig
