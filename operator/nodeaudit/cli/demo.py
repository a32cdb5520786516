"""`nodeaudit demo`: the real operator against an embedded local API with simulated AKS nodes."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--nodes-per-pool", default=3, show_default=True, help="Simulated nodes in each of the three pools.")
@click.option("--policy", "policy_path", default=None, help="Policy YAML (default: examples/procmon.yaml).")
@click.option("--fail-node", "fail_nodes", multiple=True, help="Make this simulated node's Job fail.")
@click.option("--keep-running", is_flag=True,
              help="Keep serving after the table until Ctrl-C, printing it again whenever it changes.")
@click.option("--refresh", default=5.0, show_default=True, type=click.FloatRange(min=0.2, max=3600),
              help="With --keep-running: seconds between looks at the cluster.")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="API server port on 127.0.0.1 (0: pick one).")
@click.option("--metrics-port", default=0, show_default=True, type=click.IntRange(-1, 65535),
              help="Prometheus /metrics port on 127.0.0.1 (0: pick one; -1: none).")
@click.option("--real-host", is_flag=True,
              help="Run one node's Job for real: its bundle through job-entry.sh (chroot) in a Debian 12 "
                   "root filesystem against this machine's kernel audit (root; holds the kernel-audit "
                   "lock and restores kernel audit on exit). The root is cached under .cache/rootfs/ "
                   "(NODEAUDIT_CACHE_DIR), built with mmdebstrap on first use.")
def demo(nodes_per_pool: int, policy_path: str | None, fail_nodes: tuple[str, ...], keep_running: bool,
         refresh: float, port: int, metrics_port: int, real_host: bool) -> None:
    """Run the real operator against an embedded local API with simulated AKS nodes.

    Everything listens on 127.0.0.1 only. Prints progress, then a table per node; with
    --keep-running it keeps serving (kubectl works against it, see docs/cli.md).

    \b
    Example:
      nodeaudit demo
      nodeaudit demo --keep-running                 # then: KUBECONFIG=… kubectl get nap,nodes,jobs -A
      nodeaudit demo --fail-node aks-user1-20000002-vmss000001 --nodes-per-pool 5
      sudo nodeaudit demo --real-host               # one node's Job runs for real (root)
    """
    from nodeaudit.testing.demo import run_demo

    raise SystemExit(run_demo(nodes_per_pool=nodes_per_pool, policy_path=policy_path,
                              fail_nodes=set(fail_nodes), keep_running=keep_running, refresh=refresh, port=port or None,
                              metrics_port=None if metrics_port < 0 else metrics_port, real_host=real_host))
