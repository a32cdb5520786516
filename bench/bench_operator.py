"""Operator scale: N nodes in 20 pools appear at once; how fast does every node get its Job?

Runs the real operator as a separate process (`python -m nodeaudit.cli.run`, what `nodeaudit run`
runs) against the local API server in this process, with maxUnavailable 100%. Reports the time
from the policy's creation until every Job exists, the operator's API writes per node for the
whole rollout (Job create + node record + shared ConfigMap/status/events), and the operator
process's peak RSS (VmHWM). Targets: >= 100 nodes/s, <= 4 writes/node, <= 300 MiB at 5,000 nodes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests import REPO
from tests.policies import policy_doc

NAMESPACE = "nodeaudit-system"
JOBS = ("batch", "v1", "jobs")
POLICY = ("nodeaudit.io", "v1alpha1", "nodeauditpolicies")


def _rss_peak_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _policy() -> dict[str, Any]:
    return policy_doc("procmon", [], nodeSelector={}, presets=["procmon"], monitoringAgent={"check": "None"},
                      rollout={"maxUnavailable": "100%", "maxFailures": 3})


def run_once(count: int, pools: int = 20, timeout: float = 600) -> dict[str, float]:
    from nodeaudit.core.crd import crd
    from nodeaudit.testing import simulator as sim_mod
    from nodeaudit.testing.runtime import ServerThread

    with ServerThread([crd()]) as st:
        server = st.server
        assert server is not None

        def setup() -> Any:
            server.put_object(("", "v1", "namespaces"), None, {"metadata": {"name": NAMESPACE}})
            sim = sim_mod.NodeSimulator(server, delay=0.0, hold=True).attach()
            per_pool = count // pools
            for p in range(pools):
                for i in range(per_pool):
                    server.put_object(("", "v1", "nodes"), None,
                                      sim_mod.aks_node(f"pool{p:02d}", i, vmss_suffix=f"{p:08d}"))
            return sim

        sim = st.call(setup)
        env = dict(os.environ, KUBECONFIG=st.kubeconfig_path, NODEAUDIT_NAMESPACE=NAMESPACE,
                   NODEAUDIT_DEBOUNCE_SECONDS="0.2", PYTHONPATH=str(REPO / "operator"))
        profile = ["-m", "cProfile", "-o", os.environ["BENCH_OPERATOR_PROFILE"]] \
            if os.environ.get("BENCH_OPERATOR_PROFILE") else []
        proc = subprocess.Popen([sys.executable, *profile, "-m", "nodeaudit.cli.run", "--liveness", "", "--metrics-port", "0"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # Let the operator start and list the (pre-existing) nodes, then apply the policy.
            time.sleep(3.0)
            started = time.monotonic()
            st.call(lambda: server.put_object(POLICY, None, _policy()))
            deadline = started + timeout
            while time.monotonic() < deadline:
                if st.call(lambda: len(server.list(JOBS, NAMESPACE))) >= count:
                    break
                time.sleep(0.05)
            all_jobs = time.monotonic() - started
            jobs_now = st.call(lambda: len(server.list(JOBS, NAMESPACE)))
            st.call(sim.release)

            def configured() -> int:
                pol = server.get(POLICY, None, "procmon") or {}
                return int(((pol.get("status") or {}).get("nodes") or {}).get("configured", 0))
            while time.monotonic() < deadline and st.call(configured) < count:
                time.sleep(0.1)
            done = time.monotonic() - started
            ops = st.call(lambda: [e for e in server.log if e.agent in ("kopf", "nodeaudit")])
            writes = [e for e in ops if e.verb in ("create", "update", "patch", "delete")]
            rss = _rss_peak_mib(proc.pid)
            return {"nodes": count, "jobs": jobs_now, "seconds_all_jobs": all_jobs,
                    "nodes_per_s": jobs_now / all_jobs if all_jobs else 0.0, "seconds_configured": done,
                    "configured": st.call(configured), "writes": len(writes),
                    "writes_per_node": len(writes) / count, "requests": len(ops), "rss_mib": rss}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    sizes = [int(s) for s in os.environ.get("BENCH_OPERATOR_NODES", "1000,5000").split(",") if s]
    ok = True
    for n in sizes:
        r = run_once(n)
        print(f"{r['nodes']:5d} nodes/20 pools: every Job in {r['seconds_all_jobs']:.2f}s "
              f"({r['nodes_per_s']:.0f} nodes/s); all configured in {r['seconds_configured']:.2f}s "
              f"({r['configured']:.0f}); operator writes {r['writes']:.0f} = {r['writes_per_node']:.2f}/node, "
              f"requests {r['requests']:.0f}; operator peak RSS {r['rss_mib']:.0f} MiB", flush=True)
        ok = ok and r["nodes_per_s"] >= 100 and r["writes_per_node"] <= 4 and r["rss_mib"] <= 300
    print("targets (>=100 nodes/s, <=4 writes/node, <=300 MiB):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
