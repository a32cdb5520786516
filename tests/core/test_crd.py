"""The committed CRD is exactly what the model generates, and it is a structural schema."""

from __future__ import annotations

from typing import Any

import yaml

from nodeaudit.core import crd as crd_mod
from tests import REPO

CRD_FILE = REPO / "crds" / "nodeauditpolicy.yaml"


def test_committed_crd_matches_the_model() -> None:
    assert CRD_FILE.read_text() == crd_mod.crd_yaml(), "crds/nodeauditpolicy.yaml is stale: run `make crds`"


def _walk(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(schema, dict):
        out.append((path, schema))
        for key, value in schema.get("properties", {}).items():
            out.extend(_walk(value, f"{path}.{key}"))
        if isinstance(schema.get("items"), dict):
            out.extend(_walk(schema["items"], f"{path}[]"))
        if isinstance(schema.get("additionalProperties"), dict):
            out.extend(_walk(schema["additionalProperties"], f"{path}{{}}"))
    return out


def test_structural_schema() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    version = doc["spec"]["versions"][0]
    assert doc["spec"]["scope"] == "Cluster" and doc["spec"]["group"] == "nodeaudit.io"
    assert doc["spec"]["names"]["shortNames"] == ["nap"] and doc["spec"]["names"]["plural"] == "nodeauditpolicies"
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema["properties"]["spec"], "spec"):
        assert "$ref" not in node and "title" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            continue
        assert "type" in node, f"{path} has no type"
        assert "anyOf" not in node and "oneOf" not in node, path
        if not path.endswith(("[]", "{}")):  # list items and map values are described by their field
            assert node.get("description"), f"{path} has no description (kubectl explain)"


def test_schema_rejects_what_it_can() -> None:
    spec = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    assert props["volume"]["enum"] == ["lean", "standard", "forensic"]
    assert props["monitoringAgent"]["properties"]["check"]["enum"] == ["Auto", "VMSSExtension", "ContainerInsights", "None"]
    assert props["rollout"]["properties"]["maxFailures"]["minimum"] == 0
    assert props["rollout"]["properties"]["maxUnavailable"]["x-kubernetes-int-or-string"] is True
    assert "pattern" in props["verifyInterval"]
    assert "pattern" in props["rules"]["items"]
    assert "LOG_AUTHPRIV" in props["syslog"]["properties"]["facility"]["enum"]


def test_printer_columns() -> None:
    version = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Ready", "Configured", "Matched", "Failed", "Age", "Bundle"]
    assert columns["Bundle"]["priority"] == 1
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'


def test_committed_reference_matches_the_model() -> None:
    from nodeaudit.core.reference import policy_reference_markdown

    text = (REPO / "docs" / "policy.md").read_text()
    assert text == policy_reference_markdown(), "docs/policy.md is stale: run `make crds`"
    for field in ("spec.rules", "spec.rollout.maxUnavailable", "spec.monitoringAgent.check", "spec.unsafe.allowImmutable"):
        assert f"| `{field}` |" in text
