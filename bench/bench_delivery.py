"""ARM reads and Log Analytics queries per check interval for the whole delivery check.

1,000 nodes in 20 scale sets, ``monitoringAgent.check: Auto`` with a workspace: the scale sets'
extensions (azure-mgmt-compute), the node resource group (once), the managed cluster
(azure-mgmt-containerservice), its rule associations and the DCR (azure-mgmt-monitor), then one
LogsQueryClient query for every node's canary, all against the local https emulators (127.0.0.1).
Three intervals are run: the first, a second check inside the cache TTL, and the next interval.

    python -m bench.bench_delivery [--nodes 1000] [--scale-sets 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

SUB = "11111111-2222-3333-4444-555555555555"
RG, CLUSTER, NODE_RG = "rg-prod", "aks-prod", "MC_rg-prod_aks-prod_westeurope"


def run_bench(argv: list[str] | None = None) -> dict:
    from nodeaudit.azure.check import check_policy_agents
    from nodeaudit.azure.checker import AgentChecker
    from nodeaudit.azure.clients import ArmClients, ArmOptions
    from nodeaudit.azure.credential import TokenFileCredential
    from nodeaudit.core.agent import AgentSettings, agent_condition
    from nodeaudit.testing.armserver import (
        WORKSPACE_ID,
        ArmServer,
        aks_extensions,
        seed_aks,
        vmss_node,
    )

    ap = argparse.ArgumentParser(prog="bench_delivery", description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--scale-sets", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nodeaudit-bench-delivery-") as tmp:
        server = ArmServer(tmp).start()
        try:
            token = Path(tmp) / "token"
            token.write_text(server.token)
            seed_aks(server, SUB, NODE_RG, rg=RG, cluster=CLUSTER, syslog=["auth", "authpriv"])
            server.default_extensions = lambda name: aks_extensions()
            nodes = [vmss_node(f"aks-pool{i % args.scale_sets:02d}-vmss{i:06d}", SUB, NODE_RG,
                               f"aks-pool{i % args.scale_sets:02d}-vmss", i) for i in range(args.nodes)]
            at = int(time.time()) - 1800
            records: dict[str, dict | None] = {}
            for i, n in enumerate(nodes):
                name = n["metadata"]["name"]
                canary = f"{name}:{'ab' * 6}:{at}-{i}"
                records[name] = {"result": "ok", "canaryId": canary, "canaryAt": at}
                server.ship_canary(WORKSPACE_ID, name, canary, "procmon", at)
            clock = [0.0]
            options = ArmOptions(connection_verify=server.ca_file)
            settings = AgentSettings(check="Auto", workspace_resource_id=WORKSPACE_ID)

            async def run() -> dict:
                async with ArmClients(TokenFileCredential(str(token)), endpoint=server.endpoint,
                                      logs_endpoint=server.endpoint, options=options) as clients:
                    checker = AgentChecker(clients, ttl=3240.0, clock=lambda: clock[0])
                    out = {}
                    for label, advance in (("first", 0.0), ("inside_ttl", 600.0), ("next_interval", 3000.0)):
                        clock[0] += advance
                        reads, queries = clients.arm_reads, clients.queries
                        t0 = time.perf_counter()
                        report = await check_policy_agents(nodes, settings, checker)
                        delivered = await checker.check_arrival("procmon", records, workspace_resource_id=WORKSPACE_ID,
                                                                workspace_id=None, grace_seconds=900.0)
                        out[label] = {
                            "wall_s": round(time.perf_counter() - t0, 4),
                            "arm_reads": clients.arm_reads - reads,
                            "queries": clients.queries - queries,
                            "agent_ready": agent_condition(report)["status"],
                            "delivered": delivered.status,
                            "arrived": delivered.arrived,
                            "by_operation": dict(clients.requests),
                        }
                    return out

            result = {"nodes": args.nodes, "scale_sets": args.scale_sets, **asyncio.run(run())}
        finally:
            server.stop()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"delivery check (Auto + arrival): {args.nodes} nodes in {args.scale_sets} scale sets")
        for label in ("first", "inside_ttl", "next_interval"):
            r = result[label]
            print(f"  {label:14s} ARM reads {r['arm_reads']:4d}   queries {r['queries']}   wall {r['wall_s'] * 1000:8.1f} ms"
                  f"   AgentReady={r['agent_ready']} Delivered={r['delivered']} ({r['arrived']} canaries arrived)")
    return result


def main(argv: list[str] | None = None) -> int:
    """0 when the bounds hold: per interval one list per scale set, one cluster read, one association
    list, one read per DCR (the node resource group once), and one query; nothing more inside the TTL."""
    r = run_bench(argv)
    per_interval = r["scale_sets"] + 1 + 1 + 1
    ok = (r["first"]["arm_reads"] == per_interval + 1 and r["next_interval"]["arm_reads"] == per_interval
          and r["inside_ttl"]["arm_reads"] == 0
          and all(r[k]["queries"] == 1 for k in ("first", "inside_ttl", "next_interval"))
          and r["first"]["delivered"] == "True" and r["first"]["arrived"] == r["nodes"])
    if not ok:
        print(f"target missed: expected {per_interval} ARM reads (+1 node resource group the first time) and one "
              "query per interval, none inside the TTL, every canary found")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
