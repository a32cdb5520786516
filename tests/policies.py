"""Test data shared by the suites: the one policy builder, and where the example policies are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests import REPO

EXAMPLES = REPO / "examples"

#: The seed's two rules (the `procmon` preset): every execve, 64- and 32-bit.
PROCMON_RULES = (
    "-a always,exit -F arch=b64 -S execve -k procmon",
    "-a always,exit -F arch=b32 -S execve -k procmon",
)


def policy_doc(name: str = "procmon", rules: Sequence[str] = PROCMON_RULES, **spec: Any) -> dict[str, Any]:
    """A NodeAuditPolicy document as in YAML: ``spec.rules`` and the other spec fields given
    (camelCase keys); without arguments the seed policy ``procmon``."""
    return {
        "apiVersion": "nodeaudit.io/v1alpha1",
        "kind": "NodeAuditPolicy",
        "metadata": {"name": name},
        "spec": {"rules": list(rules), **spec},
    }
