"""Node facts and label-selector matching.

Why: every decision about a node (is it ours to touch? is it ready? was it reimaged?) reads the
same few fields of a raw Node object. Reading them once, here, into a small frozen value keeps the
rollout planner pure and lets the operator keep thousands of nodes in memory cheaply (a NodeFacts
is a few hundred bytes; a raw Node is ~10 KiB).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

STATE_ANNOTATION_PREFIX = "nodeaudit.io/"
STARTUP_TAINT_KEY = "nodeaudit.io/unconfigured"
VIRTUAL_KUBELET_PROVIDER_PREFIXES = ("vk://", "virtual-kubelet://", "aci://")


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str
    value: str = ""


def node_os(labels: Mapping[str, Any]) -> str:
    """A node's OS from its labels: ``kubernetes.io/os``, else the beta label; unlabelled is linux."""
    return str(labels.get("kubernetes.io/os", labels.get("beta.kubernetes.io/os", "linux")))


@dataclass(frozen=True)
class NodeFacts:
    """What the operator needs to know about one Node."""

    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    provider_id: str = ""
    boot_id: str = ""
    ready: bool = False
    taints: tuple[Taint, ...] = ()
    deleting: bool = False
    records: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per-policy state records from the node's ``nodeaudit.io/<policy>`` annotations."""
    ready_since: str = ""
    """The Ready condition's lastTransitionTime (for the Ready-to-configured metric)."""

    @property
    def linux(self) -> bool:
        return node_os(self.labels) == "linux"

    @property
    def virtual(self) -> bool:
        """virtual-kubelet nodes (ACI virtual nodes): no host to configure."""
        if self.labels.get("type") == "virtual-kubelet":
            return True
        if self.labels.get("kubernetes.azure.com/managed") == "false" and "virtual-kubelet" in self.name:
            return True
        if any(k.startswith("virtual-kubelet.io/") for k in self.labels):
            return True
        return self.provider_id.startswith(VIRTUAL_KUBELET_PROVIDER_PREFIXES)

    @property
    def eligible(self) -> bool:
        """A Linux, non-virtual node that is not going away."""
        return self.linux and not self.virtual and not self.deleting

    @property
    def has_startup_taint(self) -> bool:
        return any(t.key == STARTUP_TAINT_KEY for t in self.taints)

    @property
    def pool(self) -> str:
        return self.labels.get("kubernetes.azure.com/agentpool", self.labels.get("agentpool", ""))

    def record(self, policy: str) -> Mapping[str, Any] | None:
        return self.records.get(policy)


def state_annotation(policy: str) -> str:
    """The node annotation that holds a policy's per-node record."""
    return f"{STATE_ANNOTATION_PREFIX}{policy}"


def facts_from_node(node: Mapping[str, Any]) -> NodeFacts:
    """Read a raw Node (dict, as the API serves it) into NodeFacts."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    ready = False
    ready_since = ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
            ready_since = str(cond.get("lastTransitionTime") or "") if ready else ""
    taints = tuple(
        Taint(key=str(t.get("key", "")), effect=str(t.get("effect", "")), value=str(t.get("value") or ""))
        for t in spec.get("taints") or []
    )
    records: dict[str, Mapping[str, Any]] = {}
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith(STATE_ANNOTATION_PREFIX) and "/" not in key[len(STATE_ANNOTATION_PREFIX):]:
            try:
                parsed = json.loads(value)
            except (TypeError, ValueError):
                continue
            if isinstance(parsed, dict):
                records[key[len(STATE_ANNOTATION_PREFIX):]] = parsed
    return NodeFacts(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        labels=dict(meta.get("labels") or {}),
        provider_id=str(spec.get("providerID") or ""),
        boot_id=str((status.get("nodeInfo") or {}).get("bootID") or ""),
        ready=ready,
        taints=taints,
        deleting=bool(meta.get("deletionTimestamp")),
        ready_since=ready_since,
        records=records,
    )


class _Requirement(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def operator(self) -> str: ...
    @property
    def values(self) -> Sequence[str]: ...


class _Selector(Protocol):
    @property
    def match_labels(self) -> Mapping[str, str]: ...
    @property
    def match_expressions(self) -> Sequence[Any]: ...


def requirement_matches(labels: Mapping[str, str], key: str, operator: str, values: Sequence[str]) -> bool:
    """One label requirement (metav1.LabelSelectorRequirement / NodeSelectorRequirement).

    In, NotIn, Exists, DoesNotExist; Gt and Lt (node affinity only) compare integers. An unknown
    operator matches nothing.
    """
    has = key in labels
    if operator == "In":
        return has and labels[key] in values
    if operator == "NotIn":
        return not has or labels[key] not in values
    if operator == "Exists":
        return has
    if operator == "DoesNotExist":
        return not has
    if operator in ("Gt", "Lt") and has and values:
        try:
            a, b = int(str(labels[key])), int(values[0])
        except ValueError:
            return False
        return a > b if operator == "Gt" else a < b
    return False


def matches(selector: _Selector | Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: matchLabels AND every matchExpression; empty matches all.

    Accepts the policy model's LabelSelector or its dict form (camelCase or snake_case keys; a
    node-affinity term ``{"matchExpressions": [...]}`` is one too).
    """
    if selector is None:
        return True
    if isinstance(selector, Mapping):
        match_labels = selector.get("matchLabels", selector.get("match_labels")) or {}
        raw = selector.get("matchExpressions", selector.get("match_expressions")) or []
        exprs = [
            (str(e.get("key")), str(e.get("operator")), [v for v in (e.get("values") or []) if isinstance(v, str)])
            for e in raw if isinstance(e, Mapping)
        ]
    else:
        match_labels = selector.match_labels
        exprs = [(e.key, e.operator, list(e.values)) for e in selector.match_expressions]
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    return all(requirement_matches(labels, key, op, values) for key, op, values in exprs)


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def node_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Node's name (a DNS-1123 subdomain, at most 253 characters), or None.

    A Node's name ends up in Job names, labels and file names: ``x/y`` must be refused, not crash."""
    if not name:
        return "empty"
    if len(name) > 253:
        return f"longer than 253 characters ({len(name)})"
    if not _DNS_SUBDOMAIN.fullmatch(name):
        return ("not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', starting and ending "
                "with a letter or digit)")
    return None
