"""ARM cost of the agent check: 5,000 nodes in 50 scale sets against a local https ARM endpoint.

Runs the real azure-mgmt-compute (aio) client through nodeaudit.azure.check.check_policy_agents and
prints the ARM calls per check (first check, a second one inside the TTL, one after the TTL) and
the wall time. Network: 127.0.0.1 only.

    python -m bench.bench_azure [--nodes 5000] [--scale-sets 50] [--concurrency 8] [--json]
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


def run_bench(argv: list[str] | None = None) -> dict:
    from nodeaudit.azure.check import check_policy_agents
    from nodeaudit.azure.checker import AgentChecker
    from nodeaudit.azure.clients import ArmClients, ArmOptions
    from nodeaudit.azure.credential import TokenFileCredential
    from nodeaudit.core.agent import AgentSettings
    from nodeaudit.testing.armserver import ArmServer, aks_extensions, ama, vmss_node

    ap = argparse.ArgumentParser(prog="bench_azure", description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--scale-sets", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds the local ARM waits per request (default 0)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args([] if argv is None else argv)

    with tempfile.TemporaryDirectory() as tmp:
        server = ArmServer(tmp).start()
        try:
            token = Path(tmp) / "token"
            token.write_text(server.token)
            if args.latency:
                from nodeaudit.testing.armserver import Resp

                server.default_extensions = None
                for i in range(args.scale_sets):
                    server.scripts[f"aks-pool{i:02d}-vmss"] = [
                        lambda: Resp(200, {"value": [*aks_extensions(), ama()]}, delay=args.latency)]
            else:
                server.default_extensions = lambda name: [*aks_extensions(), *([ama()] if sum(map(ord, name)) % 5 else [])]
            nodes = [vmss_node(f"aks-pool{i % args.scale_sets:02d}-vmss{i:06d}", SUB, f"MC_rg{i % args.scale_sets % 3}",
                               f"aks-pool{i % args.scale_sets:02d}-vmss", i) for i in range(args.nodes)]
            clock = [0.0]
            options = ArmOptions(connection_verify=server.ca_file, concurrency=args.concurrency)

            async def run() -> dict:
                async with ArmClients(TokenFileCredential(str(token)), endpoint=server.endpoint, options=options) as clients:
                    checker = AgentChecker(clients, ttl=3240.0, clock=lambda: clock[0])
                    out = {}
                    for label, advance in (("first", 0.0), ("inside_ttl", 600.0), ("next_interval", 3000.0)):
                        clock[0] += advance
                        before = len(server.log)
                        t0 = time.perf_counter()
                        report = await check_policy_agents(nodes, AgentSettings(check="VMSSExtension"), checker)
                        out[label] = {
                            "wall_s": round(time.perf_counter() - t0, 4),
                            "arm_calls": len(server.log) - before,
                            "client_counted": report.arm_requests,
                            "scale_sets": len(report.scale_sets),
                            "lacking": len(report.lacking),
                        }
                    return out

            result = {"nodes": args.nodes, "scale_sets": args.scale_sets, "concurrency": args.concurrency,
                      "latency_s": args.latency, **asyncio.run(run())}
        finally:
            server.stop()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"agent check: {args.nodes} nodes in {args.scale_sets} scale sets, concurrency {args.concurrency}, "
              f"local ARM latency {args.latency}s")
        for label in ("first", "inside_ttl", "next_interval"):
            r = result[label]
            print(f"  {label:14s} ARM calls {r['arm_calls']:4d}   wall {r['wall_s'] * 1000:8.1f} ms   "
                  f"({r['scale_sets']} scale sets, {r['lacking']} without agent)")
    return result


def main(argv: list[str] | None = None) -> int:
    """0 when the target holds: one ARM call per scale set per interval, none inside the TTL."""
    r = run_bench(argv)
    ok = (r["first"]["arm_calls"] == r["scale_sets"] == r["next_interval"]["arm_calls"]
          and r["inside_ttl"]["arm_calls"] == 0)
    if not ok:
        print("target missed: expected one ARM list call per scale set per interval and none inside the TTL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
