"""tools/lint-shell.sh: finds every shell file that ships (by name or shebang) and fails on a finding."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests import REPO

SCRIPT = REPO / "tools" / "lint-shell.sh"


def _list(root: Path) -> list[str]:
    out = subprocess.run([str(root / "tools" / "lint-shell.sh"), "--list"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return out.split()


def test_every_shipped_shell_file_is_listed() -> None:
    files = set(_list(REPO))
    shipped = {str(p.relative_to(REPO)) for p in (REPO / "operator" / "nodeaudit" / "host").glob("*.sh")}
    assert shipped and shipped <= files
    assert {".ci/run", "tests/e2e/kind-smoke.sh", "tools/lint-shell.sh"} <= files
    assert "tests/shell/standins/apt-get" in files  # no .sh suffix: found by its shebang
    assert not any(f.endswith(".py") for f in files)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


@pytest.mark.skipif(shutil.which("shellcheck") is None or shutil.which("git") is None,
                    reason="shellcheck and git needed (make apt-deps installs shellcheck)")
def test_a_finding_fails_and_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    shutil.copy2(SCRIPT, tmp_path / "tools" / "lint-shell.sh")
    host = tmp_path / "operator" / "nodeaudit" / "host"
    host.mkdir(parents=True)
    # Valid bash, but not POSIX sh: what runs on a node is checked as sh whatever its shebang says.
    (host / "apply.sh").write_text('#!/bin/bash\nset -eu\nx=(a b)\necho "${x[0]}"\n')
    (tmp_path / "run-me").write_text('#!/bin/sh\nfor f in $(ls); do echo "$f"; done\n')
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    assert sorted(_list(tmp_path)) == ["operator/nodeaudit/host/apply.sh", "run-me", "tools/lint-shell.sh"]
    r = subprocess.run([str(tmp_path / "tools" / "lint-shell.sh")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "apply.sh line 3" in r.stdout and "SC3030" in r.stdout  # arrays are undefined in POSIX sh
    assert "run-me line 2" in r.stdout and "SC2045" in r.stdout
    assert "shellcheck: 3 files, problems above" in r.stdout
