"""``nodeaudit check-agent``: does every node pool's scale set run a monitoring agent?"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import yaml

from nodeaudit.cli.common import single_policy
from nodeaudit.core import agent as A

EPILOG = """\b
Examples:
  # nodes saved with kubectl, default policy (VMSSExtension, OMS or AMA counts)
  kubectl get node aks-user-12345678-vmss000000 -o yaml > node.yaml
  nodeaudit check-agent --node node.yaml

\b
  # every node a policy selects, in the current kubectl context, as JSON
  nodeaudit check-agent --cluster --policy procmon.yaml --json

\b
Exit status: 0 every scale set has an agent (and the DCR/workspace collects the
policy's facility where one is named), 1 one lacks it, 2 the check could not be
completed (permission, throttling, timeout, bad input).
Environment: NODEAUDIT_ARM_ENDPOINT (default https://management.azure.com),
NODEAUDIT_ARM_TOKEN_FILE (a bearer token; else DefaultAzureCredential).
"""


def _load_nodes(paths: tuple[str, ...]) -> list[dict[str, Any]]:
    """Node objects from YAML files: a Node, a NodeList, or a List of Nodes (`kubectl get -o yaml`)."""
    nodes: list[dict[str, Any]] = []
    for p in paths:
        try:
            docs = list(yaml.safe_load_all(Path(p).read_text(encoding="utf-8")))
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


def _load_policy(path: str | None, name: str | None) -> tuple[Any, Any]:
    """(settings, nodeSelector) from a policy file, or the defaults."""
    from nodeaudit.azure.check import AgentSettings, settings_from_spec

    if path is None:
        return AgentSettings(), None
    try:
        policy = single_policy(path, name, pick="--policy-name NAME")
    except click.ClickException as e:  # exit 2 (bad input), not 1 (an agent missing)
        raise click.UsageError(f"--policy {path}: {e.message}") from None
    return settings_from_spec(policy.spec), policy.spec.node_selector


def _kube_client(kubeconfig: str | None, context: str | None) -> Any:
    from kubernetes import client, config

    try:
        if kubeconfig or context:
            cfg = client.Configuration()
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)  # type: ignore[no-untyped-call]
            return client.ApiClient(cfg)
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
        return client.ApiClient(cfg)
    except click.UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - any reason the kubeconfig is unusable is the message
        raise click.UsageError(f"cannot reach the cluster: {e}") from None


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--remediate", is_flag=True,
              help="Install the policy's remediation extension where the agent is missing, then upgrade the "
                   "instances (changes AKS node resources: AKS support discourages it).")
@click.option("--endpoint", envvar="NODEAUDIT_ARM_ENDPOINT", help="ARM endpoint (default https://management.azure.com).")
@click.option("--ca-file", envvar="NODEAUDIT_ARM_CA_FILE", type=click.Path(exists=True, dir_okay=False),
              help="CA bundle for the ARM endpoint (private endpoints, tests).")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds allowed per scale set (all pages and retries).")
def check_agent(
    node_files: tuple[str, ...], cluster: bool, kubeconfig: str | None, context: str | None,
    policy_file: str | None, policy_name: str | None, as_json: bool, remediate: bool, endpoint: str | None, ca_file: str | None,
    timeout: float,
) -> None:
    """Check that every node pool's VM scale set runs a monitoring agent.

    Groups the nodes by scale set (spec.providerID), lists each scale set's extensions once through
    ARM, and reports the agent (AzureMonitorLinuxAgent, or OmsAgentForLinux — retired since
    2024-08-31) and its provisioning state. With a policy that names a Data Collection Rule or a
    workspace, also confirms that its syslog source collects the policy's facility and level.
    """
    from nodeaudit.azure import check as Z

    if bool(node_files) == cluster:
        raise click.UsageError("give --node FILE... or --cluster (one of them)")
    settings, selector = _load_policy(policy_file, policy_name)
    if remediate:
        settings.remediate = True
    try:  # a bad endpoint is a usage error before the cluster is asked anything
        options = Z.ArmOptions(connection_verify=ca_file or True, deadline=timeout)
        clients = Z.ArmClients(endpoint=endpoint, options=options)
    except ValueError as e:
        raise click.UsageError(str(e)) from None

    kube = None
    if cluster or kubeconfig or context or settings.check == "ContainerInsights" or (
        settings.remediate and settings.remediation_extension == A.OMS
    ):
        kube = _kube_client(kubeconfig, context)
    if cluster:
        try:
            nodes = Z.list_nodes(kube)
        except Exception as e:  # noqa: BLE001 - any failure is one error line and exit 2
            click.echo(f"error: listing nodes failed: {type(e).__name__}: {getattr(e, 'reason', '') or e}", err=True)
            sys.exit(2)
        nodes = _select_nodes(nodes, selector)
    else:
        nodes = _load_nodes(node_files)

    async def run() -> A.AgentReport:
        async with clients:
            checker = Z.AgentChecker(clients, ttl=0.0)
            return await Z.check_policy_agents(nodes, settings, checker, kube_api_client=kube)

    try:
        report = asyncio.run(run())
    finally:
        if kube is not None:
            kube.close()
    if not report.scale_sets and not report.errors and settings.check != "None":
        # nothing was checked: not a clean answer (exit 2, not 0)
        report.errors.append(f"nothing checkable: none of the {len(nodes)} node(s) runs in a VM scale set"
                             if nodes else "nothing checkable: no node selected")
    click.echo(A.render_json(report) if as_json else A.render_table(report), nl=as_json)
    sys.exit(report.exit_code)
