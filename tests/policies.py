"""Test data shared by the suites: where the repository is, and policies built from small dicts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

BASE_POLICY: dict[str, Any] = {
    "apiVersion": "nodeaudit.io/v1alpha1",
    "kind": "NodeAuditPolicy",
    "metadata": {"name": "procmon"},
    "spec": {
        "rules": [
            "-a always,exit -F arch=b64 -S execve -k procmon",
            "-a always,exit -F arch=b32 -S execve -k procmon",
        ],
    },
}


def policy_dict(**spec: Any) -> dict[str, Any]:
    """The seed policy with spec fields replaced (camelCase keys, as in YAML)."""
    doc = copy.deepcopy(BASE_POLICY)
    doc["spec"].update(spec)
    return doc
