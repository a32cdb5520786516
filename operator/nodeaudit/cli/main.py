"""The `nodeaudit` command: offline checks and rendering, plus the operator and demo entry points.

Offline commands (validate, render, crd, presets) work on files alone so they can run as GitOps
pre-merge checks and let a reviewer see exactly what will run as root before anything is applied.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import click
import yaml

from nodeaudit import DEFAULT_IMAGE, __version__
from nodeaudit.cli.check_agent import check_agent
from nodeaudit.cli.common import single_policy
from nodeaudit.cli.demo import demo
from nodeaudit.cli.estimate import estimate
from nodeaudit.cli.report import report
from nodeaudit.cli.run import run
from nodeaudit.controller.config import DEFAULT_NAMESPACE
from nodeaudit.core import bundle as bundle_mod
from nodeaudit.core import packs as packs_mod
from nodeaudit.core import policy as policy_mod
from nodeaudit.core import presets as presets_mod
from nodeaudit.core.loader import LoadedPolicy, load_documents


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nodeaudit")
def main() -> None:
    """nodeaudit: host-level audit logging (auditd → syslog → Log Analytics) on every AKS node.

    \b
    Offline:    validate, render, crd, presets, estimate (measures on this machine's kernel)
    In-cluster: run (the operator), check-agent
    Try it:    demo (the real operator against a local API with simulated AKS nodes)
    """


for _command in (run, demo, check_agent, estimate, report):  # the command families in their own modules
    main.add_command(_command)


@main.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE... | -")
@click.option("--quiet", "-q", is_flag=True, help="Print problems only, no summary line.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (rules that reach beyond their policy).")
def validate(files: tuple[str, ...], quiet: bool, strict: bool) -> None:
    """Check NodeAuditPolicy files without a cluster.

    Reads multi-document YAML (other kinds in the stream are skipped), checks every field and every
    audit rule, and renders each policy's bundle. Exit 0 when all are valid, 1 with one line per
    problem otherwise — usable as a GitOps pre-merge check. Warnings (valid rules that reach beyond
    their policy: node-wide settings, rules that mute other policies) are printed and fail only
    with --strict.

    \b
    Example:
      nodeaudit validate examples/*.yaml
      kubectl kustomize deploy/ | nodeaudit validate -
    """
    problems: list[str] = []
    warnings: list[str] = []
    seen: dict[str, str] = {}
    valid = 0
    loaded: list[LoadedPolicy] = []
    for item in load_documents(files):
        if isinstance(item, str):
            problems.append(item)
            continue
        problems.extend(f"{item.label}: {problem}" for problem in item.problems)
        warnings.extend(f"{item.label}: warning: {warning}" for warning in item.warnings)
        if item.policy is not None:
            loaded.append(item)
            name = item.policy.name
            if name in seen:
                problems.append(f"{item.label}: metadata.name: duplicate policy name (also in {seen[name]})")
            else:
                seen[name] = item.source
                valid += 1
    suffering = policy_mod.cross_policy_warnings(item.policy for item in loaded if item.policy is not None)
    for item in loaded:
        assert item.policy is not None
        warnings.extend(f"{item.label}: warning: {w}" for w in suffering.get(item.policy.name, []))
    for line in problems + warnings:
        click.echo(line)
    if not problems and not seen:
        click.echo("no NodeAuditPolicy found in " + ", ".join(files))
        sys.exit(1)
    if not quiet:
        click.echo(f"{valid} valid, {len(problems)} problem(s), {len(warnings)} warning(s)", err=True)
    sys.exit(1 if problems or (strict and warnings) else 0)


@main.command()
@click.argument("file", metavar="POLICY.yaml")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the bundle into (created if missing).")
@click.option("--policy", "policy_name", help="Policy to render when FILE holds several.")
@click.option("--node", "node_file", type=click.Path(exists=True, dir_okay=False),
              help="A Node (YAML) to also write the Job manifest the operator would create for it.")
@click.option("--image", envvar="NODEAUDIT_IMAGE", default=DEFAULT_IMAGE,
              show_default=True, help="Image for the Job manifest (env NODEAUDIT_IMAGE).")
@click.option("--namespace", envvar="NODEAUDIT_NAMESPACE", default=DEFAULT_NAMESPACE, show_default=True,
              help="Namespace of the Job and bundle ConfigMap (env NODEAUDIT_NAMESPACE).")
def render(file: str, output: Path, policy_name: str | None, node_file: str | None, image: str,
           namespace: str) -> None:
    """Write the bundle that runs as root on each matching node.

    The bundle is apply.sh, the rules file, the syslog plugin configs, expected.rules and
    bundle.json (with the content hash). The same policy always gives the same bytes and hash.
    With --node, also writes the bundle ConfigMap and the exact Job manifest the operator would
    create for that node, so a security reviewer sees everything that will run.

    \b
    Example:
      nodeaudit render examples/procmon.yaml -o out/procmon
      nodeaudit render examples/procmon.yaml -o out/procmon --node node.yaml
    """
    policy = single_policy(file, policy_name)
    rendered = bundle_mod.render_bundle(policy)
    rendered.write(output)
    click.echo(f"bundle {rendered.hash} for policy {policy.name} -> {output}/")
    click.echo(f"rules ({bundle_mod.rules_file_name(policy.name)}, load order):")
    for rule in rendered.rules:
        click.echo(f"  {rule.text}")
    if node_file is not None:
        from nodeaudit.core import jobs

        node = yaml.safe_load(Path(node_file).read_text(encoding="utf-8"))
        if not isinstance(node, dict) or node.get("kind") not in (None, "Node"):
            raise click.ClickException(f"{node_file}: not a Node")
        node_name = str((node.get("metadata") or {}).get("name") or "")
        if not node_name:
            raise click.ClickException(f"{node_file}: metadata.name missing")
        manifests = [
            jobs.configmap_manifest(rendered, namespace),
            jobs.job_manifest(
                policy_name=policy.name, policy_uid=policy.metadata.uid or "", node_name=node_name,
                bundle_hash=rendered.hash, image=image, namespace=namespace, action="apply",
            ),
        ]
        target = output.parent / f"{output.name}-{node_name}.job.yaml"
        target.write_text(yaml.safe_dump_all(manifests, sort_keys=False), encoding="utf-8")
        click.echo(f"job manifest for node {node_name} -> {target}")


@main.command()
@click.option("--reference", is_flag=True, help="Print the policy reference (docs/policy.md) instead.")
def crd(reference: bool) -> None:
    """Print the CustomResourceDefinition generated from the policy model.

    This is what `make crds` writes to crds/nodeauditpolicy.yaml: a structural schema with a
    description on every field (for `kubectl explain`), printer columns and the status subresource.

    \b
    Example:
      nodeaudit crd | kubectl apply -f -
      kubectl explain nodeauditpolicy.spec.rollout
    """
    if reference:
        from nodeaudit.core.reference import policy_reference_markdown

        click.echo(policy_reference_markdown(), nl=False)
        return
    from nodeaudit.core import crd as crd_mod

    click.echo(crd_mod.crd_yaml(), nl=False)


@main.command("presets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--show", "show", metavar="NAME", help="Print one preset's rules, by requirement for a compliance pack.")
@click.option("--containers", is_flag=True, help="With --show: the rules as `containers: true` expands them.")
def presets_command(as_json: bool, show: str | None, containers: bool) -> None:
    """List the named rule sets, volume levels and the AKS noise list, with what each records.

    \b
    Example:
      nodeaudit presets
      nodeaudit presets --show pci-dss
      nodeaudit presets --show cis --containers
    """
    if show is not None:
        _show_preset(show, containers, as_json)
        return
    if as_json:
        click.echo(json.dumps(_presets_document(), indent=2))
        return
    doc = _presets_document()
    for preset in doc["presets"]:
        click.echo(f"preset {preset['name']}: {preset['title']}")
        click.echo(textwrap.indent(textwrap.fill(preset["description"], 96), "  "))
        for rule in preset["rules"]:
            click.echo(f"    {rule}")
        click.echo()
    for volume in doc["volumes"]:
        dropped = ", ".join(volume["excludedMsgtypes"]) or "nothing"
        click.echo(f"volume {volume['name']} (drops {dropped}):")
        click.echo(textwrap.indent(textwrap.fill(volume["description"], 96), "  "))
    click.echo("\nexclude.aksNoise: true excludes these executables (as -a never,exit rules, placed first):")
    for noise in doc["aksNoise"]:
        click.echo(f"  {noise['path']}\n    {noise['why']}")


def _show_preset(name: str, containers: bool, as_json: bool) -> None:
    preset = presets_mod.PRESETS.get(name)
    if preset is None:
        raise click.BadParameter(f'unknown preset "{name}" (one of {", ".join(presets_mod.PRESETS)})',
                                 param_hint="--show")
    groups = [(r.id, r.title, r.rules) for r in preset.requirements] or [("", preset.title, preset.rules)]
    if containers:
        groups = [(rid, title, packs_mod.container_variant(rules)) for rid, title, rules in groups]
    if as_json:
        click.echo(json.dumps({"name": preset.name, "benchmark": preset.benchmark, "containers": containers,
                               "requirements": [{"id": rid, "title": title, "rules": list(rules)}
                                                for rid, title, rules in groups]}, indent=2))
        return
    click.echo(f"preset {preset.name}: {preset.title}" + (f" ({preset.benchmark})" if preset.benchmark else ""))
    for rid, title, rules in groups:
        click.echo(f"\n{rid}  {title}" if rid else f"\n{title}")
        for rule in rules:
            click.echo(f"  {rule}")


def _presets_document() -> dict[str, list[dict[str, Any]]]:
    return {
        "presets": [
            {"name": p.name, "title": p.title, "description": p.description, "rules": list(p.rules)}
            for p in presets_mod.PRESETS.values()
        ],
        "volumes": [
            {"name": v.name, "description": v.description, "excludedMsgtypes": list(v.excluded_msgtypes)}
            for v in presets_mod.VOLUMES.values()
        ],
        "aksNoise": [{"path": n.path, "why": n.why} for n in presets_mod.AKS_NOISE],
    }
