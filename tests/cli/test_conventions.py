"""Conventions people expect from kubectl, helm and flux: version, completion, -o json|yaml wherever
a command prints data, and an example in every --help."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess

import click
import pytest
import yaml

from nodeaudit import __version__
from nodeaudit.cli.main import main
from tests import REPO
from tests.cli.usage import NODEAUDIT, assert_one_line_error, nodeaudit
from tests.policies import EXAMPLES


def test_version_names_version_commit_python_and_kopf() -> None:
    result = nodeaudit("version", "-o", "json")
    assert result.code == 0 and result.stderr == ""
    info = json.loads(result.stdout)
    assert info["version"] == __version__ and info["python"] == platform.python_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["kopf"])
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert info["commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    assert nodeaudit("version", env={"NODEAUDIT_COMMIT": "abc123"}).stdout.splitlines()[1] == "commit:  abc123"
    assert yaml.safe_load(nodeaudit("version", "-o", "yaml").stdout)["version"] == __version__


def test_bash_completion_completes_commands_and_options() -> None:
    script = nodeaudit("completion", "bash").stdout
    assert "complete -o nosort -F _nodeaudit_completion nodeaudit" in script
    # The script is real bash: source it and ask it, as bash does on <TAB>.
    probe = ('source /dev/stdin; COMP_WORDS=(nodeaudit val); COMP_CWORD=1; _nodeaudit_completion nodeaudit; '
             'printf "%s\\n" "${COMPREPLY[@]}"; COMPREPLY=(); COMP_WORDS=(nodeaudit validate --allow); COMP_CWORD=2; '
             '_nodeaudit_completion nodeaudit; printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "-c", probe], input=script, capture_output=True, text=True, timeout=60,
                          env={"PATH": str(__import__("pathlib").Path(NODEAUDIT).parent) + ":/usr/bin:/bin"})
    assert done.stdout.split() == ["validate", "--allow-empty"], done.stderr


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion(shell: str) -> None:
    script = nodeaudit("completion", shell).stdout
    assert {"zsh": "#compdef nodeaudit", "fish": "complete --no-files --command nodeaudit"}[shell] in script
    if shutil.which(shell):
        check = ["zsh", "-n"] if shell == "zsh" else ["fish", "--no-execute"]
        assert subprocess.run(check, input=script, text=True, capture_output=True).returncode == 0


def test_completion_of_an_unknown_shell() -> None:
    assert_one_line_error(nodeaudit("completion", "tcsh"), 2, r"Invalid value for '\{bash\|zsh\|fish\}'")


@pytest.mark.parametrize("args", [["presets"], ["version"], ["crd"]])
def test_data_commands_print_json_and_yaml(args: list[str]) -> None:
    as_json = json.loads(nodeaudit(*args, "-o", "json").stdout)
    assert yaml.safe_load(nodeaudit(*args, "-o", "yaml").stdout) == as_json


def test_validate_and_check_agent_print_json() -> None:
    assert json.loads(nodeaudit("validate", str(EXAMPLES), "-o", "json").stdout)["valid"] == 3
    help_text = nodeaudit("check-agent", "--help").stdout + nodeaudit("estimate", "--help").stdout
    assert help_text.count("-o, --output [text|json|yaml]") == 2


def _commands(group: click.Group) -> list[str]:
    return sorted(group.commands)


@pytest.mark.parametrize("command", _commands(main))
def test_every_help_has_an_example(command: str) -> None:
    result = nodeaudit(command, "--help")
    assert result.code == 0
    example = result.stdout.split("Example", 1)
    assert len(example) == 2, f"nodeaudit {command} --help has no example"
    assert f"nodeaudit {command}" in example[1]


def test_render_prints_what_it_wrote_as_json(tmp_path) -> None:
    out = tmp_path / "out"
    result = nodeaudit("render", str(EXAMPLES / "procmon.yaml"), "-o", str(out), "--format", "json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["policy"] == "procmon" and doc["bundle"].startswith("sha256:")
    assert doc["files"] == sorted(p.name for p in out.iterdir())
    assert json.loads((out / "bundle.json").read_text())["hash"] == doc["bundle"]
