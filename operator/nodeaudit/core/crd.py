"""The CRD, generated from the pydantic model so the two can never disagree.

pydantic emits JSON Schema with $refs, titles, nullable unions and int|str unions; Kubernetes wants
a structural OpenAPI v3 schema (everything inlined, one type per node, int-or-string spelled its own
way). This module does that translation and adds what only the API server can enforce (printer
columns, the name rule in CEL, a cheap pattern on rule lines).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from nodeaudit.core import policy as policy_mod

_DROP_KEYS = {"title", "$defs"}


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = copy.deepcopy(defs[schema["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        target.update(extra)
        return _inline(target, defs)
    out = {k: _inline(v, defs) for k, v in schema.items() if k not in _DROP_KEYS}
    if isinstance(out.get("description"), str):
        out["description"] = " ".join(out["description"].split())  # docstrings wrap; kubectl explain re-wraps
    variants = out.get("anyOf")
    if variants is not None:
        non_null = [v for v in variants if v.get("type") != "null"]
        types = sorted(v.get("type", "") for v in non_null)
        del out["anyOf"]
        if types == ["integer", "string"]:
            out["x-kubernetes-int-or-string"] = True
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        elif len(non_null) == 1:
            merged = dict(non_null[0])
            merged.update(out)
            out = merged
        else:
            raise ValueError(f"cannot express union {variants} structurally")
        if out.get("default", ...) is None:
            del out["default"]
    if out.get("type") == "object" and "properties" in out:
        # Structural schemas forbid properties beside additionalProperties; unknown fields are
        # kept with x-kubernetes-preserve-unknown-fields where the model allows extras.
        out.pop("additionalProperties", None)
    return out


def spec_schema() -> dict[str, Any]:
    raw = policy_mod.NodeAuditPolicySpec.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    schema["description"] = "What a NodeAuditPolicy asks of the matching nodes."
    rules = schema["properties"]["rules"]
    rules["items"]["pattern"] = r"^-[^\r\n]*$"
    rules["items"]["maxLength"] = 1024
    return schema


def status_schema() -> dict[str, Any]:
    raw = policy_mod.NodeAuditPolicyStatus.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    schema["description"] = "What the operator observed, in kstatus conventions."
    schema["x-kubernetes-preserve-unknown-fields"] = True
    schema["properties"]["agent"]["items"]["x-kubernetes-preserve-unknown-fields"] = True
    schema["properties"]["conditions"]["items"]["x-kubernetes-preserve-unknown-fields"] = True
    return schema


def _strip_defaults(schema: Any) -> Any:
    """Defaults stay in the model only: the API server would otherwise write every default into
    every stored object, and GitOps tools would then see a permanent diff against the repo."""
    if isinstance(schema, list):
        return [_strip_defaults(item) for item in schema]
    if isinstance(schema, dict):
        out = {k: _strip_defaults(v) for k, v in schema.items() if k != "default"}
        if schema.get("default") not in (None, "", [], {}) and "description" in out:
            out["description"] = f"{out['description']} Default: {_show(schema['default'])}."
        return out
    return schema


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def crd() -> dict[str, Any]:
    name_rule = (
        f"self.metadata.name.size() <= {policy_mod.POLICY_NAME_MAX} && "
        f"self.metadata.name.matches('{policy_mod.POLICY_NAME_PATTERN}')"
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{policy_mod.PLURAL}.{policy_mod.API_GROUP}"},
        "spec": {
            "group": policy_mod.API_GROUP,
            "scope": "Cluster",
            "names": {
                "kind": policy_mod.KIND,
                "listKind": f"{policy_mod.KIND}List",
                "plural": policy_mod.PLURAL,
                "singular": "nodeauditpolicy",
                "shortNames": ["nap"],
                "categories": ["nodeaudit"],
            },
            "versions": [
                {
                    "name": policy_mod.API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                        {"name": "Configured", "type": "integer", "jsonPath": ".status.nodes.configured"},
                        {"name": "Matched", "type": "integer", "jsonPath": ".status.nodes.matched"},
                        {"name": "Failed", "type": "integer", "jsonPath": ".status.nodes.failed"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {"name": "Bundle", "type": "string", "jsonPath": ".status.bundle", "priority": 1},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "NodeAuditPolicy makes every matching Linux node run auditd with the "
                                "policy's rules and forward the records to syslog for Log Analytics."
                            ),
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {
                                    "rule": name_rule,
                                    "message": "metadata.name must be a DNS-1123 label (it names the node's rules file)",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _strip_defaults(spec_schema()),
                                "status": _strip_defaults(status_schema()),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `make crds` (nodeaudit crd) from operator/nodeaudit/core/policy.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)
