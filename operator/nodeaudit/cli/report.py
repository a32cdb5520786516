"""`nodeaudit report`: evidence for auditors from the cluster, or from a saved `kubectl get` output."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, cast

import click

from nodeaudit.core import policy as policy_mod
from nodeaudit.core import report as report_mod
from nodeaudit.core.rollout import parse_time


def _read_cluster(context: str | None) -> dict[str, Any]:
    """NodeAuditPolicies and Nodes from the cluster of the kubeconfig (or in-cluster config)."""
    import kubernetes

    try:
        try:
            kubernetes.config.load_kube_config(context=context)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        api = kubernetes.client.ApiClient()
        custom = kubernetes.client.CustomObjectsApi(api)
        policies = cast("dict[str, Any]", custom.list_cluster_custom_object(
            policy_mod.API_GROUP, policy_mod.API_VERSION, policy_mod.PLURAL))
        nodes: dict[str, Any] = api.sanitize_for_serialization(  # type: ignore[no-untyped-call]
            kubernetes.client.CoreV1Api(api).list_node())
    except kubernetes.config.ConfigException as error:
        raise click.ClickException(f"no cluster to read ({error}); or give a saved file with --from") from None
    except kubernetes.client.ApiException as error:
        raise click.ClickException(f"reading the cluster failed: {error.status} {error.reason}") from None
    except OSError as error:  # connection refused, DNS: urllib3 wraps them in OSError subclasses
        raise click.ClickException(f"cannot reach the cluster: {error}") from None
    items = [{**p, "kind": "NodeAuditPolicy"} for p in policies.get("items", [])]
    items += [{**n, "kind": "Node"} for n in nodes.get("items", [])]
    return {"kind": "List", "items": items}


def _read_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise click.ClickException(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise click.ClickException(f"{path}: line {error.lineno}: not JSON ({error.msg}); "
                                   "save it with kubectl get nap,nodes -o json") from None
    if not isinstance(document, dict):
        raise click.ClickException(f"{path}: expected a List of NodeAuditPolicies and Nodes")
    return document


@click.command("report")
@click.option("--from", "source", metavar="FILE|-",
              help="A saved `kubectl get nap,nodes -o json` (default: read the cluster).")
@click.option("--context", help="kubeconfig context (when reading the cluster).")
@click.option("--format", "fmt", type=click.Choice(["markdown", "json", "csv"]), default="markdown",
              show_default=True, help="Output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file (atomically) instead of stdout.")
@click.option("--at", "at_text", metavar="TIME",
              help="The time the evidence is for (RFC 3339, e.g. 2026-12-01T00:00:00Z; default: now).")
def report(source: str | None, context: str | None, fmt: str, output: Path | None, at_text: str | None) -> None:
    """Evidence for auditors: per node and policy, the bundle, rules loaded, auditd version, distro,
    last verification and the kernel's lost counter, and per compliance pack which requirement ids
    are in force; then, where the records do not reach.

    \b
    Example:
      nodeaudit report --format markdown -o evidence.md
      kubectl get nap,nodes -o json > cluster.json && nodeaudit report --from cluster.json --format csv
      nodeaudit report --from cluster.json --at 2026-12-01T00:00:00Z
    """
    now = dt.datetime.now(dt.timezone.utc)
    at = now
    if at_text is not None:
        parsed = parse_time(at_text)
        if parsed is None:
            raise click.BadParameter(f"{at_text!r} is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z)",
                                     param_hint="--at")
        at = parsed
    document = _read_file(source) if source is not None else _read_cluster(context)
    policies, nodes = report_mod.split_objects(document)
    if not policies:
        raise click.ClickException(f"{source or 'the cluster'}: no NodeAuditPolicy found")
    result = report_mod.build_report(policies, nodes, at=at, generated=now)
    text = report_mod.render(result, fmt)
    if output is None:
        click.echo(text, nl=False)
        return
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(output)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise click.ClickException(f"{output}: cannot write: {error.strerror or error}") from None
    click.echo(f"{len(result.rows)} node/policy rows -> {output}", err=True)
