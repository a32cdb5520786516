"""tests/e2e/kind-smoke.sh cannot run in the development sandbox (no kind, no registry): check that
it is executable, shellcheck-clean, and does what `make e2e-kind` promises."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "kind-smoke.sh"


def test_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)


def test_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_steps() -> None:
    text = SCRIPT.read_text()
    for step in ("kind create cluster", "docker build", "kind load docker-image", 'apply -k "$repo/deploy"',
                 "examples/procmon.yaml", "--for=condition=Ready", "nap/procmon", "get nap -o wide",
                 "kind delete cluster", "trap cleanup EXIT"):
        assert step in text, step
