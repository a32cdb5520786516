"""`nodeaudit run`: start the operator the right way.

Why a wrapper around kopf: the operator must watch Nodes and policies cluster-wide but Jobs, Pods
and ConfigMaps only in its own namespace (so its Role stays namespaced), expose a liveness
endpoint, bound its watches, and refuse to start on unusable settings or credentials. ``kopf run``
would need all of that on every command line; here it is the default.
"""

from __future__ import annotations

import asyncio
import logging
import os

import click

from nodeaudit.controller.config import DEFAULT_NAMESPACE


@click.command("run")
@click.option("--namespace", envvar="NODEAUDIT_NAMESPACE", default=DEFAULT_NAMESPACE, show_default=True,
              help="Where Jobs and bundle ConfigMaps live.")
@click.option("--peering", default=None, help="kopf peering name for several replicas (default: standalone).")
@click.option("--liveness", default="http://0.0.0.0:8080/healthz", show_default=True,
              help="kopf liveness endpoint ('' to disable).")
# Accepted and ignored (kopf posts no Events from log lines here; nodeaudit posts its own):
# older command lines (bench/bench_operator.py) still pass it.
@click.option("--watch-timeout", default=300.0, show_default=True, help="Server-side watch timeout (seconds).")
@click.option("--metrics-port", envvar="NODEAUDIT_METRICS_PORT", default=9090, show_default=True, type=int,
              help="Serve Prometheus metrics on this port at /metrics (0 disables).")
@click.option("--metrics-address", envvar="NODEAUDIT_METRICS_ADDRESS", default="0.0.0.0", show_default=True,
              help="Bind address of the metrics endpoint.")
@click.option("-v", "--verbose", is_flag=True)
def run(namespace: str, peering: str | None, liveness: str, watch_timeout: float,
        metrics_port: int, metrics_address: str, verbose: bool) -> None:
    """Run the operator (cluster-wide for Nodes and policies; Jobs in NAMESPACE)."""
    from nodeaudit.controller import app
    from nodeaudit.controller.config import Config, SettingError

    try:
        config = Config.from_env(namespace=namespace)
    except SettingError as e:
        click.echo(f"nodeaudit run: {e}", err=True)
        raise SystemExit(2) from None
    problem = credentials_problem()
    if problem is not None:
        click.echo(f"nodeaudit run: {problem}", err=True)
        raise SystemExit(2)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if metrics_port:
        from nodeaudit.controller import metrics

        server = metrics.serve(metrics_port, metrics_address)
        logging.getLogger("nodeaudit").info("metrics on http://%s:%d/metrics", metrics_address, server.server_port)
    settings = app.make_settings(server_timeout=watch_timeout, client_timeout=watch_timeout + 30, verbose=verbose)
    asyncio.run(app.operator(config, peering=peering, liveness=liveness or None, settings=settings))


def credentials_problem() -> str | None:
    """None when kopf's login (in-cluster first, then the kubeconfig) will find credentials;
    else one line naming the kubeconfig path and the in-cluster state."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config(client_configuration=kubernetes.client.Configuration())  # type: ignore[no-untyped-call]
        return None
    except kubernetes.config.ConfigException as e:
        in_cluster = (f"in-cluster: {e}" if os.environ.get("KUBERNETES_SERVICE_HOST")
                      else "in-cluster: not in a cluster (KUBERNETES_SERVICE_HOST unset)")
    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    missing = [p for p in path.split(os.pathsep) if p and not os.path.exists(p)]
    if missing and len(missing) == len([p for p in path.split(os.pathsep) if p]):
        return f"no usable Kubernetes credentials: kubeconfig {path}: no such file; {in_cluster}"
    try:
        kubernetes.config.load_kube_config(config_file=path, client_configuration=kubernetes.client.Configuration())  # type: ignore[no-untyped-call]
    except Exception as e:  # noqa: BLE001 - any reason the kubeconfig is unusable is the message
        detail = " ".join(str(e).split()) or type(e).__name__
        return f"no usable Kubernetes credentials: kubeconfig {path}: {detail}; {in_cluster}"
    return None


if __name__ == "__main__":  # `python -m nodeaudit.cli.run` (used by the tests and the benchmark)
    run()
