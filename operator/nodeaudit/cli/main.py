"""The `nodeaudit` command: offline checks and rendering, plus the operator and demo entry points.

Offline commands (validate, render, crd, presets) work on files alone so they can run as GitOps
pre-merge checks and let a reviewer see exactly what will run as root before anything is applied.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from nodeaudit import DEFAULT_IMAGE, __version__
from nodeaudit.cli.check_agent import check_agent
from nodeaudit.cli.common import single_policy
from nodeaudit.cli.estimate import estimate
from nodeaudit.cli.params import DATA_FORMATS, check_namespace, print_data
from nodeaudit.cli.run import demo, run
from nodeaudit.controller.config import DEFAULT_NAMESPACE
from nodeaudit.core import bundle as bundle_mod
from nodeaudit.core import documents as loader
from nodeaudit.core import presets as presets_mod
from nodeaudit.core.documents import LoadedPolicy, load_documents


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nodeaudit")
def main() -> None:
    """nodeaudit: host-level audit logging (auditd → syslog → Log Analytics) on every AKS node.

    \b
    Offline:    validate, render, crd, presets, estimate (measures on this machine's kernel)
    In-cluster: run (the operator), check-agent
    Try it:     demo (the real operator against a local API with simulated AKS nodes)
    Shell:      version, completion bash|zsh|fish

    Exit codes: 0 ok, 1 failed, 2 usage error, 3 check incomplete (docs/cli.md).
    """


for _command in (run, demo, check_agent, estimate):  # the command families in their own modules
    main.add_command(_command)


OUTPUT_FORMATS = ("text", "json", "yaml", "github")


@main.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE|DIR|- ...")
@click.option("-R", "--recursive", is_flag=True, help="Read the directories' subdirectories too.")
@click.option("--allow-empty", is_flag=True,
              help="Exit 0 when the inputs hold no NodeAuditPolicy (a stream of other kinds is fine).")
@click.option("-o", "--output", "output", type=click.Choice(OUTPUT_FORMATS), default="text", show_default=True,
              help="text: one line per problem; json/yaml: one document with file, document, line per "
                   "problem; github: GitHub Actions annotations.")
@click.option("--max-size", "max_mib", type=click.FloatRange(min=0.001, max=4096), default=loader.DEFAULT_MAX_MIB,
              show_default=True, metavar="MiB", help="Refuse an input (a file or stdin) larger than this.")
@click.option("--quiet", "-q", is_flag=True, help="Print problems only, no summary line.")
def validate(files: tuple[str, ...], recursive: bool, allow_empty: bool, output: str, max_mib: float,
             quiet: bool) -> None:
    """Check NodeAuditPolicy files without a cluster.

    Reads multi-document YAML and JSON, `kind: List` and NodeAuditPolicyList (what `kubectl get nap
    -o yaml` prints) and the *.yaml, *.yml and *.json files of a directory (-R: and below). Other
    kinds are skipped. Checks every field and every audit rule and renders each policy's bundle.

    Everything validate reports goes to stdout (problems, then the summary; or one json/yaml
    document); stderr is only for usage errors. Exit 0 when all are valid, 1 when there is a
    problem or no policy at all (unless --allow-empty), 2 on a usage error.

    \b
    Example:
      nodeaudit validate examples/
      kubectl kustomize deploy/examples | nodeaudit validate -
      kubectl kustomize deploy/ | nodeaudit validate --allow-empty -
      nodeaudit validate -R policies/ -o github     # annotations on the pull request
    """
    problems: list[loader.Problem] = []
    seen: dict[str, str] = {}
    valid: list[LoadedPolicy] = []
    for item in load_documents(files, recursive=recursive, max_bytes=int(max_mib * 1048576)):
        if isinstance(item, loader.Problem):
            problems.append(item)
            continue
        problems.extend(item.locate(problem) for problem in item.problems)
        if item.policy is not None:
            name = item.policy.name
            if name in seen:
                problems.append(item.locate(f"metadata.name: duplicate policy name (also in {seen[name]})"))
            else:
                seen[name] = item.source
                valid.append(item)
    errors = [p for p in problems if p.severity == "error"]
    empty = not problems and not seen
    if empty:
        summary = "no NodeAuditPolicy found in " + ", ".join(files) + (" (allowed)" if allow_empty else "")
    else:
        summary = f"{len(valid)} valid, {len(errors)} problem(s)"
    _print_validation(output, problems, valid, summary, quiet and not empty)
    sys.exit(1 if errors or (empty and not allow_empty) else 0)


def _print_validation(output: str, problems: list[loader.Problem], valid: list[LoadedPolicy], summary: str,
                      quiet: bool) -> None:
    if output in ("json", "yaml"):
        doc = {"valid": len(valid), "errors": sum(p.severity == "error" for p in problems),
               "warnings": sum(p.severity == "warning" for p in problems), "summary": summary,
               "problems": [p.as_dict() for p in problems],
               "policies": [{"file": v.source, "document": v.index + 1, "item": v.item, "line": v.line,
                             "name": v.name} for v in valid]}
        click.echo(json.dumps(doc, indent=2) if output == "json" else yaml.safe_dump(doc, sort_keys=False), nl=output == "json")
        return
    for problem in problems:
        click.echo(_github_annotation(problem) if output == "github" else problem.text())
    if not quiet:
        click.echo(f"::notice title=nodeaudit validate::{_escape(summary)}" if output == "github" else summary)


def _escape(text: str, prop: bool = False) -> str:
    """GitHub Actions workflow-command escaping (properties also escape ':' and ',')."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def _github_annotation(problem: loader.Problem) -> str:
    props = [f"file={_escape(problem.file, True)}"] if problem.file != "<stdin>" else []
    if problem.line:
        props.append(f"line={problem.line}")
    props.append("title=" + _escape("nodeaudit validate" + (f" ({problem.policy})" if problem.policy else ""), True))
    return f"::{problem.severity} {','.join(props)}::{_escape(problem.message)}"


@main.command()
@click.argument("file", metavar="POLICY.yaml | -")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Directory to write the bundle into (created if missing; must be empty unless --force).")
@click.option("--force", is_flag=True, help="Replace what OUTPUT already holds (the whole directory).")
@click.option("--format", "print_format", type=DATA_FORMATS, default="text", show_default=True,
              help="How to print what was written (-o names the directory here, as DESIGN fixes it).")
@click.option("--policy", "policy_name", help="Policy to render when FILE holds several.")
@click.option("--node", "node_file", type=click.Path(dir_okay=False),
              help="A Node (YAML) to also write the Job manifest the operator would create for it "
                   "(OUTPUT/manifests/NODE.yaml, with the bundle ConfigMap).")
@click.option("--image", envvar="NODEAUDIT_IMAGE", default=DEFAULT_IMAGE,
              show_default=True, help="Image for the Job manifest (env NODEAUDIT_IMAGE).")
@click.option("--namespace", envvar="NODEAUDIT_NAMESPACE", default=DEFAULT_NAMESPACE, show_default=True,
              help="Namespace of the Job and bundle ConfigMap (env NODEAUDIT_NAMESPACE).")
def render(file: str, output: Path, force: bool, print_format: str, policy_name: str | None, node_file: str | None,
           image: str, namespace: str) -> None:
    """Write the bundle that runs as root on each matching node.

    The bundle is apply.sh, the rules file, the syslog plugin configs, expected.rules and
    bundle.json (with the content hash). The same policy always gives the same bytes and hash.
    With --node, also writes the bundle ConfigMap and the exact Job manifest the operator would
    create for that node, so a security reviewer sees everything that will run.

    Everything is written into a new directory beside OUTPUT and renamed into place at the end:
    on any error nothing is left behind, and an existing OUTPUT is untouched.

    \b
    Example:
      nodeaudit render examples/procmon.yaml -o out/procmon
      nodeaudit render examples/procmon.yaml -o out/procmon --node node.yaml --force
    """
    check_namespace(namespace, "--namespace")
    target = _output_directory(output, force)
    policy = single_policy(file, policy_name)
    node_name = _node_name(node_file) if node_file is not None else None
    rendered = bundle_mod.render_bundle(policy)
    extra: dict[str, bytes] = {}
    if node_name is not None:
        from nodeaudit.core import jobs

        manifests = [
            jobs.configmap_manifest(rendered, namespace),
            jobs.job_manifest(
                policy_name=policy.name, policy_uid=policy.metadata.uid or "", node_name=node_name,
                bundle_hash=rendered.hash, image=image, namespace=namespace, action="apply",
            ),
        ]
        extra[f"manifests/{node_name}.yaml"] = yaml.safe_dump_all(manifests, sort_keys=False).encode()
    _write_directory(target, lambda tmp: rendered.write(tmp), extra)
    lines = [f"bundle {rendered.hash} for policy {policy.name} -> {output}/",
             f"rules ({bundle_mod.rules_file_name(policy.name)}, load order):",
             *(f"  {rule.text}" for rule in rendered.rules)]
    if node_name is not None:
        lines.append(f"job manifest for node {node_name} -> {output / 'manifests' / (node_name + '.yaml')}")
    data = {"bundle": rendered.hash, "policy": policy.name, "directory": str(output),
            "files": sorted([*rendered.files, *extra]), "rules": [rule.text for rule in rendered.rules]}
    print_data(print_format, data, "\n".join(lines))


def _output_directory(output: Path, force: bool) -> Path:
    """The absolute directory to render into, refusing what would write somewhere unintended."""
    if str(output) in ("", "."):
        raise click.UsageError("-o/--output: give a directory (an empty path would write into the current "
                               "directory)")
    target = Path(os.path.abspath(output))
    if target == Path(target.anchor) or target == Path.home():
        raise click.UsageError(f"-o/--output: refusing to write a bundle into {target}")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise click.ClickException(f"{output}: exists and is not a directory")
    for ancestor in target.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise click.ClickException(f"{output}: {ancestor} is a file, not a directory")
            break
    if target.is_dir():
        try:
            entries = sorted(p.name for p in target.iterdir())
        except OSError as error:
            raise click.ClickException(f"{output}: cannot read: {error.strerror or error}") from None
        if entries and not force:
            shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
            raise click.ClickException(f"{output}: directory is not empty ({len(entries)} entries: {shown}); "
                                       "use --force to replace its contents")
    return target


def _write_directory(target: Path, write: Callable[[Path], object], extra: dict[str, bytes]) -> None:
    """Fill a new directory beside ``target`` and rename it into place: all or nothing."""
    import shutil
    import tempfile

    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as error:
        raise click.ClickException(f"{target}: cannot create: {error.strerror or error}") from None
    old: Path | None = None
    try:
        write(tmp)
        for name, data in extra.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        os.chmod(tmp, 0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=parent))
            os.replace(target, old / "previous")
        os.replace(tmp, target)
    except OSError as error:
        if old is not None and not target.exists():
            os.replace(old / "previous", target)  # put back what was there
        shutil.rmtree(tmp, ignore_errors=True)
        raise click.ClickException(f"{target}: cannot write: {error.strerror or error}") from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _node_name(node_file: str) -> str:
    """The name of the Node in ``node_file`` (YAML or JSON), or a one-line ClickException."""
    from nodeaudit.core import nodes

    try:
        source, text = loader.read_text(node_file, int(loader.DEFAULT_MAX_MIB * 1048576))
    except loader.InputError as error:
        raise click.ClickException(f"{error} (a Node in YAML or JSON is expected)") from None
    try:
        node = yaml.load(text, Loader=loader.YAML_LOADER)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise click.ClickException(f"{source}: {where}invalid YAML: "
                                   f"{getattr(error, 'problem', None) or error}") from None
    if not isinstance(node, dict) or node.get("kind") not in (None, "Node"):
        what = node.get("kind") if isinstance(node, dict) else type(node).__name__
        raise click.ClickException(f"{source}: not a Node (found {what})")
    name = (node.get("metadata") or {}).get("name") if isinstance(node.get("metadata"), dict) else None
    if not name:
        raise click.ClickException(f"{source}: metadata.name missing")
    problem = nodes.node_name_problem(str(name))
    if problem:
        raise click.ClickException(f'{source}: metadata.name "{name}": {problem}')
    return str(name)


@main.command()
@click.option("--reference", is_flag=True, help="Print the policy reference (docs/policy.md) instead.")
@click.option("-o", "--output", "output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
def crd(reference: bool, output: str) -> None:
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

    if output == "json":
        click.echo(json.dumps(crd_mod.crd(), indent=2))
        return
    click.echo(crd_mod.crd_yaml(), nl=False)


@main.command("presets")
@click.option("-o", "--output", "output", type=DATA_FORMATS, default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True, hidden=True, help="The same as -o json.")
def presets_command(output: str, as_json: bool) -> None:
    """List the named rule sets, volume levels and the AKS noise list, with what each records.

    \b
    Example:
      nodeaudit presets
      nodeaudit presets -o json | jq '.presets[].name'
    """
    if as_json or output != "text":
        print_data("json" if as_json else output, _presets_document(), "")
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


def _commit() -> str:
    """The source commit: $NODEAUDIT_COMMIT (the image sets it from its build), else the git
    checkout this package runs from (an editable install), else "unknown"."""
    if os.environ.get("NODEAUDIT_COMMIT"):
        return os.environ["NODEAUDIT_COMMIT"]
    import subprocess

    source = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def version_info() -> dict[str, str]:
    import importlib.metadata
    import platform

    try:
        kopf_version = importlib.metadata.version("kopf")
    except importlib.metadata.PackageNotFoundError:
        kopf_version = "not installed"
    return {"version": __version__, "commit": _commit(), "python": platform.python_version(), "kopf": kopf_version}


@main.command("version")
@click.option("-o", "--output", "output", type=DATA_FORMATS, default="text", show_default=True)
def version_command(output: str) -> None:
    """Print the version, the source commit, the Python and the kopf versions.

    \b
    Example:
      nodeaudit version
      nodeaudit version -o json
    """
    info = version_info()
    print_data(output, info, "\n".join(f"{k + ':':9}{v}" for k, v in info.items()))


SHELLS = ("bash", "zsh", "fish")


@main.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    \b
    Example:
      source <(nodeaudit completion bash)                      # this shell
      nodeaudit completion bash > /etc/bash_completion.d/nodeaudit
      nodeaudit completion zsh > "${fpath[1]}/_nodeaudit"
      nodeaudit completion fish > ~/.config/fish/completions/nodeaudit.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # every name in SHELLS is one of click's
    click.echo(cls(main, {}, "nodeaudit", "_NODEAUDIT_COMPLETE").source())
