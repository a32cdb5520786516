"""`nodeaudit demo`: the real operator against an embedded local API with simulated AKS nodes."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--nodes-per-pool", default=3, show_default=True, help="Simulated nodes in each of the three pools.")
@click.option("--policy", "policy_path", default=None, help="Policy YAML (default: examples/procmon.yaml).")
@click.option("--fail-node", "fail_nodes", multiple=True, help="Make this simulated node's Job fail.")
@click.option("--keep-running", is_flag=True, help="Keep serving after the table until Ctrl-C.")
@click.option("--port", default=0, help="API server port on 127.0.0.1 (0: pick one).")
@click.option("--metrics-port", default=0, show_default=True,
              help="Prometheus /metrics port on 127.0.0.1 (0: pick one; -1: none).")
@click.option("--real-host", is_flag=True,
              help="Run one node's Job for real: its bundle through job-entry.sh (chroot) in a Debian 12 "
                   "root filesystem against this machine's kernel audit (root; holds the kernel-audit "
                   "lock and restores kernel audit on exit). The root is cached under .cache/rootfs/ "
                   "(NODEAUDIT_CACHE_DIR), built with mmdebstrap on first use.")
def demo(nodes_per_pool: int, policy_path: str | None, fail_nodes: tuple[str, ...], keep_running: bool,
         port: int, metrics_port: int, real_host: bool) -> None:
    """Run the real operator against an embedded local API with simulated AKS nodes."""
    from nodeaudit.testing.demo import run_demo

    raise SystemExit(run_demo(nodes_per_pool=nodes_per_pool, policy_path=policy_path,
                              fail_nodes=set(fail_nodes), keep_running=keep_running, port=port or None,
                              metrics_port=None if metrics_port < 0 else metrics_port, real_host=real_host))
