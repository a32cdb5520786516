"""The offline CLI: validate as a pre-merge check, render for reviewers, help that explains."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from nodeaudit.cli.main import main
from tests import REPO
from tests.policies import EXAMPLES, policy_doc

runner = CliRunner()


def _write(path: Path, *docs: object) -> Path:
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return path


def test_validate_examples_ok() -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    result = runner.invoke(main, ["validate", *files])
    assert result.exit_code == 0, result.output
    assert f"{len(files)} valid, 0 problem(s)" in result.output


def test_validate_reports_one_line_per_problem(tmp_path: Path) -> None:
    bad = policy_doc(rules=["-a always,exit -F arch=b64 -S execve", "-a always,exit -F arch=b64 -S execvee"],
                      volume="loud")
    path = _write(tmp_path / "policy.yaml", bad)
    result = runner.invoke(main, ["validate", "-q", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert f'{path}:8: procmon: spec.rules[1]: unknown syscall "execvee" for arch b64' in lines
    assert any(line.startswith(f"{path}:9: procmon: spec.volume: ") for line in lines)
    assert len(lines) == 2


def test_validate_multi_document_stream_skips_other_kinds(tmp_path: Path) -> None:
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    good = policy_doc()
    second = policy_doc()
    second["metadata"] = {"name": "second"}
    path = _write(tmp_path / "all.yaml", other, good, None, second)
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 valid" in result.output


def test_validate_stdin() -> None:
    result = runner.invoke(main, ["validate", "-"], input=yaml.safe_dump(policy_doc()))
    assert result.exit_code == 0, result.output

    result = runner.invoke(main, ["validate", "-q", "-"], input=yaml.safe_dump(policy_doc(volume="x")))
    assert result.exit_code == 1 and result.output.startswith("<stdin>:9: procmon: spec.volume")


def test_validate_duplicate_names(tmp_path: Path) -> None:
    path = _write(tmp_path / "dup.yaml", policy_doc(), policy_doc())
    result = runner.invoke(main, ["validate", "-q", str(path)])
    assert result.exit_code == 1 and "duplicate policy name" in result.output


def test_validate_yaml_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("kind: NodeAuditPolicy\nspec:\n  rules: [\n")
    result = runner.invoke(main, ["validate", "-q", str(path)])
    assert result.exit_code == 1 and f"{path}:4: invalid YAML" in result.output and "invalid YAML" in result.output


def test_validate_missing_file_and_empty(tmp_path: Path) -> None:
    result = runner.invoke(main, ["validate", "-q", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1 and "cannot read" in result.output
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    result = runner.invoke(main, ["validate", str(empty)])
    assert result.exit_code == 1 and "no NodeAuditPolicy found" in result.output


def test_validate_document_without_name(tmp_path: Path) -> None:
    doc = policy_doc()
    doc["metadata"] = {}
    path = _write(tmp_path / "p.yaml", doc)
    result = runner.invoke(main, ["validate", "-q", str(path)])
    assert result.exit_code == 1 and re.search(rf"{re.escape(str(path))}:\d+: document 1: metadata.name", result.output)


def test_render_writes_bundle_and_shows_rules(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = runner.invoke(main, ["render", str(EXAMPLES / "procmon.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["policy"] == "procmon" and manifest["hash"] in result.output
    assert "-a always,exit -F arch=b64 -S execve -k procmon" in result.output
    # Same policy, same bytes: a second render into another directory is identical.
    again = tmp_path / "again"
    runner.invoke(main, ["render", str(EXAMPLES / "procmon.yaml"), "-o", str(again)])
    for path in out.iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes()


def test_render_refuses_invalid_policy_and_writes_nothing(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.yaml", policy_doc(rules=["-e 2"]))
    out = tmp_path / "out"
    result = runner.invoke(main, ["render", str(path), "-o", str(out)])
    assert result.exit_code == 1 and "spec.rules[0]" in result.output
    assert not out.exists()


def test_render_picks_one_of_several(tmp_path: Path) -> None:
    second = policy_doc()
    second["metadata"] = {"name": "second"}
    path = _write(tmp_path / "two.yaml", policy_doc(), second)
    result = runner.invoke(main, ["render", str(path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--policy" in result.output
    result = runner.invoke(main, ["render", str(path), "-o", str(tmp_path / "o"), "--policy", "second"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "bundle.json").read_text())["policy"] == "second"


@pytest.mark.parametrize("command", ["validate", "render", "crd", "presets"])
def test_help_explains_with_an_example(command: str) -> None:
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert len(result.output) > 200
    if command in ("validate", "render", "presets"):
        assert "Example" in result.output


def test_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "nodeaudit"
    done = subprocess.run([str(exe), "validate", str(EXAMPLES / "procmon.yaml")], capture_output=True, text=True,
                          cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr


def test_render_names_a_missing_policy(tmp_path: Path) -> None:
    path = _write(tmp_path / "one.yaml", policy_doc())
    result = runner.invoke(main, ["render", str(path), "-o", str(tmp_path / "o"), "--policy", "nope"])
    assert result.exit_code == 1
    assert f'{path}: no NodeAuditPolicy named "nope" (found: procmon)' in result.output
