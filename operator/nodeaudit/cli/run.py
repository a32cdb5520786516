"""`nodeaudit run` and `nodeaudit demo`: start the operator (or the whole demo) the right way.

Why a wrapper around kopf: the operator must watch Nodes and policies cluster-wide but Jobs, Pods
and ConfigMaps only in its own namespace (so its Role stays namespaced), expose a liveness
endpoint, bound its watches, and refuse to start on unusable settings or credentials. ``kopf run``
would need all of that on every command line; here it is the default.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

import click

from nodeaudit import __version__
from nodeaudit.cli.params import EXIT_FAILED, EXIT_USAGE, FiniteFloat, check_namespace
from nodeaudit.controller.config import DEFAULT_NAMESPACE

# The demo's test kit (``nodeaudit.testing``: the kmock-based API server, the node simulator) is the
# ``[demo]`` extra, not a runtime dependency of the operator: without it `nodeaudit demo` says how
# to install it, in one line. The extra's distributions, by import name:
DEMO_EXTRA = frozenset({"kmock", "trustme"})
INSTALL_HINT = "pip install 'nodeaudit[demo]'"


@click.command("run")
@click.option("--namespace", envvar="NODEAUDIT_NAMESPACE", default=DEFAULT_NAMESPACE, show_default=True,
              help="Where Jobs and bundle ConfigMaps live (a DNS-1123 label).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), envvar="KUBECONFIG",
              help="kubeconfig to log in with (default: in-cluster, then $KUBECONFIG or ~/.kube/config).")
@click.option("--context", help="kubeconfig context (default: its current-context).")
@click.option("--peering", default=None, help="kopf peering name for several replicas (default: standalone).")
@click.option("--liveness", default="http://0.0.0.0:8080/healthz", show_default=True,
              help="kopf liveness endpoint ('' to disable).")
# Accepted and ignored (kopf posts no Events from log lines here; nodeaudit posts its own):
# older command lines (bench/bench_operator.py) still pass it.
@click.option("--watch-timeout", default=300.0, show_default=True, type=FiniteFloat(min=1, max=86400),
              help="Server-side watch timeout (seconds).")
@click.option("--metrics-port", envvar="NODEAUDIT_METRICS_PORT", default=9090, show_default=True,
              type=click.IntRange(0, 65535), help="Serve Prometheus metrics on this port at /metrics (0 disables).")
@click.option("--metrics-address", envvar="NODEAUDIT_METRICS_ADDRESS", default="0.0.0.0", show_default=True,
              help="Bind address of the metrics endpoint.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              envvar="NODEAUDIT_LOG_FORMAT", help="json: one JSON object a line (time, level, logger, message).")
@click.option("-v", "--verbose", is_flag=True)
def run(namespace: str, kubeconfig: str | None, context: str | None, peering: str | None, liveness: str,
        watch_timeout: float, metrics_port: int, metrics_address: str, log_format: str, verbose: bool) -> None:
    """Run the operator (cluster-wide for Nodes and policies; Jobs in NAMESPACE).

    Logs in in-cluster (its ServiceAccount) or, outside a cluster, with the kubeconfig. Prints one
    startup line (namespace, image, what it watches, metrics port), then logs to stderr.

    \b
    Example:
      nodeaudit run                                        # in the cluster: deploy/ runs this
      nodeaudit run --kubeconfig ~/.kube/config --context aks-dev --metrics-port 0
      nodeaudit run --log-format json --namespace nodeaudit-system
    """
    from nodeaudit.controller import app
    from nodeaudit.controller.config import Config, SettingError

    check_namespace(namespace, "--namespace")
    try:
        config = Config.from_env(namespace=namespace)
    except SettingError as e:
        click.echo(f"nodeaudit run: {e}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # kopf's login and the operator's client read it
    if context:
        from nodeaudit.controller.lifecycle import CONTEXT_ENV, kubeconfig_connection

        connection = kubeconfig_connection(kubeconfig, context)
        if isinstance(connection, str):
            click.echo(f"nodeaudit run: --context: {connection}", err=True)
            raise SystemExit(EXIT_USAGE)
        os.environ[CONTEXT_ENV] = context
    else:
        problem = credentials_problem()
        if problem is not None:
            click.echo(f"nodeaudit run: {problem}", err=True)
            raise SystemExit(EXIT_USAGE)
    _configure_logging(log_format, verbose)
    log = logging.getLogger("nodeaudit")
    metrics_at = "off"
    if metrics_port:
        from nodeaudit.controller import metrics

        try:
            server = metrics.serve(metrics_port, metrics_address)
        except OSError as e:
            click.echo(f"nodeaudit run: --metrics-port {metrics_port}: cannot listen on "
                       f"{metrics_address}:{metrics_port}: {e.strerror or e}", err=True)
            raise SystemExit(EXIT_FAILED) from None
        metrics_at = f"http://{metrics_address}:{server.server_port}/metrics"
    log.info("nodeaudit %s starting: namespace %s, image %s, watching Nodes and NodeAuditPolicies cluster-wide "
             "and Jobs, Pods and ConfigMaps in %s, metrics %s, liveness %s", __version__, namespace, config.image,
             namespace, metrics_at, liveness or "off")
    settings = app.make_settings(server_timeout=watch_timeout, client_timeout=watch_timeout + 30, verbose=verbose)
    asyncio.run(app.operator(config, peering=peering, liveness=liveness or None, settings=settings))


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line, for log pipelines (Log Analytics, Loki) that parse fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": _utc(record.created), "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def _utc(created: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(created, datetime.timezone.utc).isoformat(timespec="milliseconds")


def _configure_logging(log_format: str, verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


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

    \b
    Example:
      pip install 'nodeaudit[demo]'
      nodeaudit demo --nodes-per-pool 5 --fail-node aks-user1-20000002-vmss000001
      nodeaudit demo --keep-running        # then: KUBECONFIG=… kubectl get nap,nodes,jobs -A (docs/cli.md)
    """
    try:
        from nodeaudit.testing.demo import run_demo
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in DEMO_EXTRA:
            raise
        click.echo(f"nodeaudit demo: needs the demo extra ({e.name} is not installed): {INSTALL_HINT}", err=True)
        raise SystemExit(2) from None

    raise SystemExit(run_demo(nodes_per_pool=nodes_per_pool, policy_path=policy_path,
                              fail_nodes=set(fail_nodes), keep_running=keep_running, refresh=refresh, port=port or None,
                              metrics_port=None if metrics_port < 0 else metrics_port, real_host=real_host))


if __name__ == "__main__":  # `python -m nodeaudit.cli.run` (used by the tests and the benchmark)
    run()
