"""``nodeaudit check-agent``: does every node pool's scale set run a monitoring agent?"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import yaml

from nodeaudit.cli.common import single_policy
from nodeaudit.cli.params import DATA_FORMATS, EXIT_INCOMPLETE, FiniteFloat, print_data
from nodeaudit.core import agent as A

EPILOG = """\b
Examples:
  # nodes saved with kubectl, default policy (Auto: scale sets, add-on, DCRs)
  kubectl get node aks-user-12345678-vmss000000 -o yaml > node.yaml
  nodeaudit check-agent --node node.yaml

\b
  # every node a policy selects, in the current kubectl context, as JSON
  nodeaudit check-agent --cluster --policy procmon.yaml --json

\b
Exit status: 0 a path ships the policy's records (and every canary arrived,
when a workspace is named), 1 something is missing (agent, collection, a
canary), 2 a usage error (bad option or input file), 3 the check could not be
completed (permission, throttling, timeout).
Environment: NODEAUDIT_ARM_ENDPOINT (default https://management.azure.com),
NODEAUDIT_LOGS_ENDPOINT (default https://api.loganalytics.io),
NODEAUDIT_CLUSTER_RESOURCE_ID (else the node resource group's managedBy),
NODEAUDIT_ARM_TOKEN_FILE (a bearer token; else DefaultAzureCredential).
"""


def _load_nodes(paths: tuple[str, ...]) -> list[dict[str, Any]]:
    """Node objects from YAML files: a Node, a NodeList, or a List of Nodes (`kubectl get -o yaml`)."""
    nodes: list[dict[str, Any]] = []
    for p in paths:
        try:
            text = sys.stdin.read() if p == "-" else Path(p).read_text(encoding="utf-8")
            docs = list(yaml.safe_load_all(text))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise click.UsageError(f"--node {p}: {e}") from None
        for index, doc in enumerate(docs, start=1):
            if doc is None:  # an empty document (a trailing ---)
                continue
            where = f"--node {p}: document {index}"
            kind = doc.get("kind") if isinstance(doc, Mapping) else None
            if kind == "Node":
                nodes.append(dict(doc))
            elif kind in ("NodeList", "List") and isinstance(doc.get("items"), list):
                for i, item in enumerate(doc["items"]):
                    # NodeList items from the API carry no kind; a List's items must say Node
                    item_kind = item.get("kind", "Node" if kind == "NodeList" else None) if isinstance(item, Mapping) else None
                    if item_kind != "Node":
                        raise click.UsageError(f"{where}: items[{i}] is {_what(item)}, not a Node")
                    nodes.append(dict(item))
            else:
                raise click.UsageError(f"{where} is {_what(doc)}, not a Node or NodeList")
    if not nodes:
        raise click.UsageError("no Node object in the --node file(s)")
    return nodes


def _what(doc: object) -> str:
    if not isinstance(doc, Mapping):
        return f"a {type(doc).__name__}"
    kind = doc.get("kind")
    return f"a {kind}" if kind else "a mapping without kind"


def _load_policy(path: str | None, name: str | None) -> tuple[Any, Any, str | None]:
    """(settings, nodeSelector, policy name) from a policy file, or the defaults."""
    if path is None:
        return A.AgentSettings(), None, None
    try:
        policy = single_policy(path, name, pick="--policy-name NAME")
    except click.ClickException as e:  # exit 2 (bad input), not 1 (an agent missing)
        raise click.UsageError(f"--policy {path}: {e.message}") from None
    return A.settings_from_spec(policy.spec), policy.spec.node_selector, policy.name


def _records(nodes: list[dict[str, Any]], policy: str) -> dict[str, dict[str, Any] | None]:
    """node name -> the policy's record (the node annotation the operator writes), None when absent."""
    import json

    from nodeaudit.core.nodes import state_annotation

    out: dict[str, dict[str, Any] | None] = {}
    for node in nodes:
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        text = annotations.get(state_annotation(policy))
        try:
            rec = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            rec = None
        out[A.node_name(node)] = rec if isinstance(rec, dict) else None
    return out


def _kube_configuration(kubeconfig: str | None, context: str | None) -> Any:
    """The kubeconfig (or in-cluster) settings, loaded by the kubernetes package's config loader."""
    from kubernetes import client, config

    try:
        if kubeconfig or context:
            cfg = client.Configuration()
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)  # type: ignore[no-untyped-call]
            return cfg
        # $KUBECONFIG now (the kubernetes package reads it once, when imported), else ~/.kube/config
        location = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            cfg = client.Configuration()
            config.load_kube_config(config_file=location, client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException as no_kubeconfig:
            cfg = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            except config.ConfigException as not_in_cluster:
                raise click.UsageError(
                    f"cannot reach the cluster: no kubeconfig at {location} "
                    f"({no_kubeconfig}) and not running in a cluster ({not_in_cluster}); "
                    "give --kubeconfig or set KUBECONFIG") from None
        return cfg
    except click.UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - any reason the kubeconfig is unusable is the message
        raise click.UsageError(f"cannot reach the cluster: {e}") from None


def _kube(kubeconfig: str | None, context: str | None) -> Any:
    """The operator's own async kube layer (``nodeaudit.controller.kube.Kube``) with the kubeconfig's
    credentials: the CLI reads the cluster exactly as the operator does, without blocking."""
    import kopf

    from nodeaudit.controller.kube import Kube

    cfg = _kube_configuration(kubeconfig, context)
    auth = str((cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken") or "")
    prefix = (cfg.api_key_prefix or {}).get("authorization")
    scheme, _, token = (f"{prefix} {auth}" if prefix else auth).partition(" ")
    kube = Kube()
    kube.configure(kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert or None, insecure=not cfg.verify_ssl,
        scheme=scheme or None, token=token or None,
        username=cfg.username or None, password=cfg.password or None,
        certificate_path=cfg.cert_file or None, private_key_path=cfg.key_file or None,
    ))
    return kube


def _select_nodes(nodes: list[dict[str, Any]], selector: Any) -> list[dict[str, Any]]:
    """The nodes the operator would check for the policy: eligible (Linux, not virtual, not being
    deleted) and matched by its nodeSelector."""
    from nodeaudit.core.nodes import facts_from_node, matches

    out = []
    for node in nodes:
        facts = facts_from_node(node)
        if facts.eligible and matches(selector, facts.labels):
            out.append(node)
    return out


@click.command("check-agent", epilog=EPILOG)
@click.option("--node", "node_files", multiple=True, type=click.Path(dir_okay=False),
              help="A Node (or NodeList) YAML file, e.g. from `kubectl get node NAME -o yaml`. Repeatable.")
@click.option("--cluster", is_flag=True, help="Read the nodes from the cluster (kubeconfig or in-cluster).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="kubeconfig for --cluster / ContainerInsights.")
@click.option("--context", help="kubeconfig context.")
@click.option("--policy", "policy_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="A policy FILE (YAML): its monitoringAgent/syslog settings and (with --cluster) its "
                   "nodeSelector.")
@click.option("--policy-name", metavar="NAME", help="The policy to use when the --policy FILE holds several.")
@click.option("--check", "check_kind", type=click.Choice(["Auto", "VMSSExtension", "ContainerInsights"]),
              help="Override the policy's monitoringAgent.check (default: the policy's, else Auto).")
@click.option("-o", "--output", "output", type=DATA_FORMATS, default="text", show_default=True,
              help="text: a table; json/yaml: the report.")
@click.option("--json", "as_json", is_flag=True, help="The same as -o json.")
@click.option("--remediate", is_flag=True,
              help="Install the policy's remediation extension where the agent is missing, then upgrade the "
                   "instances (changes AKS node resources: AKS support discourages it).")
@click.option("--endpoint", envvar="NODEAUDIT_ARM_ENDPOINT", help="ARM endpoint (default https://management.azure.com).")
@click.option("--logs-endpoint", envvar="NODEAUDIT_LOGS_ENDPOINT",
              help="Log Analytics query endpoint (default https://api.loganalytics.io).")
@click.option("--ca-file", envvar="NODEAUDIT_ARM_CA_FILE", type=click.Path(exists=True, dir_okay=False),
              help="CA bundle for the ARM endpoint (private endpoints, tests).")
@click.option("--timeout", type=FiniteFloat(min=0, min_open=True, max=3600), default=120.0, show_default=True,
              help="Seconds allowed per scale set (all pages and retries).")
def check_agent(
    node_files: tuple[str, ...], cluster: bool, kubeconfig: str | None, context: str | None,
    policy_file: str | None, policy_name: str | None, check_kind: str | None, output: str, as_json: bool, remediate: bool, endpoint: str | None,
    logs_endpoint: str | None, ca_file: str | None,
    timeout: float,
) -> None:
    """Check the three layers that get a node's audit records to Log Analytics.

    Agent: groups the nodes by scale set (spec.providerID) and lists each scale set's extensions
    once through ARM (AzureMonitorLinuxAgent, or OmsAgentForLinux, retired since 2024-08-31).
    Collection (check Auto, the default): reads the managed cluster's monitoring add-on and the
    Data Collection Rules associated with it, and says whether one ships the policy's facility at
    its level to a workspace, with the az command that fixes it when not. Arrival (a --policy that
    names monitoringAgent.workspaceResourceId or workspaceId): one Log Analytics query for the
    newest canary of every node, against the canaryId the operator recorded on each node.
    """
    from nodeaudit.azure.check import check_policy_agents
    from nodeaudit.azure.checker import AgentChecker
    from nodeaudit.azure.clients import ArmClients, ArmOptions

    if bool(node_files) == cluster:
        raise click.UsageError("give --node FILE... or --cluster (one of them)")
    settings, selector, name = _load_policy(policy_file, policy_name)
    if remediate:
        settings.remediate = True
    if check_kind:
        settings.check = check_kind
    try:  # a bad endpoint is a usage error before the cluster is asked anything
        options = ArmOptions(connection_verify=ca_file or True, deadline=timeout)
        clients = ArmClients(endpoint=endpoint, options=options, logs_endpoint=logs_endpoint)
    except ValueError as e:
        raise click.UsageError(str(e)) from None

    kube = None
    if cluster or kubeconfig or context or settings.check == "ContainerInsights" or (
        settings.remediate and settings.remediation_extension == A.OMS
    ):
        kube = _kube(kubeconfig, context)

    file_nodes = None if cluster else _load_nodes(node_files)

    async def run() -> A.AgentReport | str:
        async with clients:
            try:
                nodes = file_nodes
                if nodes is None:
                    assert kube is not None  # --cluster always makes one
                    try:
                        listing = await kube.get("/api/v1/nodes")
                    except Exception as e:  # noqa: BLE001 - any failure is one error line and exit 3
                        return f"listing nodes failed: {type(e).__name__}: {e}"
                    items = (listing or {}).get("items") or [] if isinstance(listing, dict) else []
                    nodes = _select_nodes([n for n in items if isinstance(n, dict)], selector)
                checker = AgentChecker(clients, ttl=0.0)
                report = await check_policy_agents(nodes, settings, checker, kube=kube)
                if name is not None and (settings.workspace_resource_id or settings.workspace_id):
                    # arrival: the records the operator left on the nodes name each latest canary
                    report.delivery = await checker.check_arrival(
                        name, _records(nodes, name), workspace_resource_id=settings.workspace_resource_id,
                        workspace_id=settings.workspace_id, grace_seconds=settings.delivery_grace_seconds)
            finally:
                if kube is not None:
                    await kube.close()
        if not report.scale_sets and not report.errors and settings.runs:
            # nothing was checked: not a clean answer (exit 3, not 0)
            report.errors.append(f"nothing checkable: none of the {len(nodes)} node(s) runs in a VM scale set"
                                 if nodes else "nothing checkable: no node selected")
        return report

    report = asyncio.run(run())
    if isinstance(report, str):  # the nodes could not be listed: nothing was checked
        click.echo(f"error: {report}", err=True)
        sys.exit(EXIT_INCOMPLETE)
    if as_json:
        output = "json"
    print_data(output, json.loads(A.render_json(report)) if output != "text" else None, A.render_table(report))
    sys.exit(report.exit_code)
