"""Whether `kubectl kustomize` can build deploy/: it uses `replacements`, `labels` and targeted
`patches` (kustomize v4.1+, kubectl 1.22+). Debian 12's kubernetes-client (kubectl 1.20, kustomize
v2.0.3: `'base' must be a file`) cannot, so those tests skip there, saying why."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest


def kustomize_problem() -> str | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "kubectl (with kustomize) not installed"
    try:
        out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True,
                             timeout=30).stdout
        version = str(json.loads(out).get("kustomizeVersion", ""))
    except (OSError, subprocess.SubprocessError, ValueError):
        version = ""
    m = re.match(r"v?(\d+)\.(\d+)", version)
    if m is None or (int(m.group(1)), int(m.group(2))) < (4, 1):
        return (f"kubectl's kustomize ({version or 'v2, kubectl 1.20'}) cannot build deploy/ "
                "(replacements, labels: kustomize v4.1+, kubectl 1.22+)")
    return None


PROBLEM = kustomize_problem()
needs_kustomize = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")
