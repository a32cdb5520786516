"""Run the installed `nodeaudit` as a user would (a subprocess) and check how it fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NODEAUDIT = str(Path(sys.executable).parent / "nodeaudit")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def nodeaudit(*args: str, cwd: Path | None = None, input: str | bytes | None = None,
              env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([NODEAUDIT, *args], cwd=cwd, input=input.encode() if isinstance(input, str) else input,
                          capture_output=True, env=full_env, timeout=timeout)
    return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


def files_under(path: Path) -> dict[str, bytes]:
    """Every file below ``path`` (hidden ones too) with its bytes: "nothing written" compares these."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_one_line_error(result: Result, code: int, pattern: str) -> str:
    """Exit ``code``, no traceback, and exactly one error line on stderr matching ``pattern``.

    click's usage errors add its 'Usage:' and 'Try ... --help' lines, as kubectl adds 'See ... -h'."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith(("Usage:", "Try '"))]
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), (pattern, lines[0])
    return lines[0]
