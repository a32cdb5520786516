"""`nodeaudit validate` as a pre-merge check, run as CI runs it (a subprocess), and the demo's
usage errors."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import yaml

from tests import REPO
from tests.cli.usage import assert_one_line_error, nodeaudit
from tests.kustomize import needs_kustomize
from tests.policies import EXAMPLES, policy_doc


def _bad(name: str = "bad") -> dict[str, object]:
    doc = policy_doc(rules=["-a always,exit -F arch=b64 -S execvee"])
    doc["metadata"] = {"name": name}
    return doc


def _line(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_validate_dev_zero_is_capped() -> None:
    start = time.monotonic()
    result = nodeaudit("validate", "-q", "/dev/zero", timeout=60)
    assert result.code == 1 and "Traceback" not in result.stderr
    assert result.stdout.strip() == "/dev/zero: larger than 16 MiB (the input cap; raise it with --max-size MiB)"
    assert time.monotonic() - start < 30  # it used to read forever


def test_validate_max_size(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(policy_doc()) + "# " + "x" * 2000 + "\n")
    result = nodeaudit("validate", "-q", str(path), "--max-size", "0.001")
    assert (result.code, result.stdout.strip()) == (1, f"{path}: larger than 1048 bytes (the input cap; raise it "
                                                       "with --max-size MiB)")
    assert nodeaudit("validate", str(path)).code == 0


def test_validate_lists_as_kubectl_prints_them(tmp_path: Path) -> None:
    good = policy_doc()
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [good, _bad()]}))
    result = nodeaudit("validate", "-q", str(path))
    assert result.code == 1
    assert result.stdout.strip() == f'{path}:{_line(path, "execvee")}: bad: spec.rules[0]: unknown syscall "execvee" for arch b64'
    typed = tmp_path / "typed.yaml"
    typed.write_text(yaml.safe_dump({"apiVersion": "nodeaudit.io/v1alpha1", "kind": "NodeAuditPolicyList",
                                     "items": [good]}))
    result = nodeaudit("validate", str(typed))
    assert (result.code, result.stdout.strip()) == (0, "1 valid, 0 problem(s)")


def test_validate_directories_and_recursion(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "deep").mkdir()
    (tmp_path / "a" / "p.yaml").write_text(yaml.safe_dump(policy_doc()))
    (tmp_path / "a" / "notes.txt").write_text("not yaml: [")
    (tmp_path / "a" / "deep" / "bad.yml").write_text(yaml.safe_dump(_bad()))
    result = nodeaudit("validate", str(tmp_path / "a"))
    assert (result.code, result.stdout.strip()) == (0, "1 valid, 0 problem(s)")
    result = nodeaudit("validate", "-R", str(tmp_path / "a"))
    assert result.code == 1
    assert result.stdout.splitlines() == [f'{tmp_path}/a/deep/bad.yml:{_line(tmp_path / "a" / "deep" / "bad.yml", "execvee")}: bad: spec.rules[0]: unknown syscall '
                                          '"execvee" for arch b64', "1 valid, 1 problem(s)"]


@needs_kustomize
def test_the_readme_pre_merge_examples_are_true() -> None:
    readme = (REPO / "README.md").read_text()
    for line, code in (("kubectl kustomize deploy/examples | nodeaudit validate -", 0),
                       ("kubectl kustomize deploy/ | nodeaudit validate --allow-empty -", 0)):
        assert line in readme
        stream = subprocess.run(line.split(" | ")[0].split(), cwd=REPO, capture_output=True, timeout=60, check=True)
        result = nodeaudit(*line.split(" | ")[1].split()[1:], input=stream.stdout)
        assert result.code == code, result.stdout + result.stderr
    stream = subprocess.run(["kubectl", "kustomize", "deploy/"], cwd=REPO, capture_output=True, timeout=60, check=True)
    result = nodeaudit("validate", "-", input=stream.stdout)
    assert (result.code, result.stdout.strip()) == (1, "no NodeAuditPolicy found in -")


def test_validate_json_names_file_document_and_line(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
                                        policy_doc(), _bad()]))
    result = nodeaudit("validate", str(path), "-o", "json")
    assert result.code == 1 and result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["valid"] == 1 and doc["errors"] == 1
    assert doc["problems"] == [{"file": str(path), "message": 'spec.rules[0]: unknown syscall "execvee" for arch b64',
                                "document": 3, "line": _line(path, "execvee"), "policy": "bad", "item": None, "severity": "error"}]
    assert doc["policies"] == [{"file": str(path), "document": 2, "item": None,
                                "line": path.read_text().splitlines().index("---") + 2, "name": "procmon"}]
    assert yaml.safe_load(nodeaudit("validate", str(path), "-o", "yaml").stdout) == doc


def test_validate_github_annotations(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_bad("a,b")))
    result = nodeaudit("validate", str(path), "-o", "github")
    assert result.code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"::error file={path},line=4,title=nodeaudit validate (a%2Cb)::metadata.name: ")
    assert lines[-1] == "::notice title=nodeaudit validate::0 valid, 2 problem(s)"


def test_validate_prints_everything_on_stdout(tmp_path: Path) -> None:
    """The convention (docs/cli.md): what validate reports is on stdout; stderr only for usage errors."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_bad()))
    result = nodeaudit("validate", str(path))
    assert result.stderr == "" and result.stdout.splitlines()[-1] == "0 valid, 1 problem(s)"
    assert_one_line_error(nodeaudit("validate", str(path), "-o", "xml"), 2, r"Invalid value for '-o' / '--output'")
    result = nodeaudit("validate", str(EXAMPLES))
    assert (result.code, result.stderr) == (0, "")


def test_demo_port_out_of_range() -> None:
    assert_one_line_error(nodeaudit("demo", "--port", "99999"), 2, r"Invalid value for '--port': 99999 is not in the range")


def test_demo_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = nodeaudit("demo", "--port", str(port), timeout=60)
    assert_one_line_error(result, 1, rf"nodeaudit demo: --port {port}: cannot listen on 127.0.0.1:{port}: "
                                     r"(address already in use|.*in use)")
