"""Kubernetes RBAC rule matching for tests: is one API request allowed by a set of Role/ClusterRole
rules? Used to check the shipped deploy/ RBAC (no wildcards, nothing unused) and, with the requests
the test API server records during the operator suite, that every request the operator made is
allowed (`allowed_by`), and every rule was used (`unused_rules`).

A request is (verb, api_group, resource, subresource, namespace, name), with the verb in RBAC
terms: get, list, watch, create, update, patch, delete, deletecollection. `verb_of` maps an HTTP
method (and whether the URL named an object and `?watch=`) to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Request:
    verb: str
    group: str  # "" for the core API
    resource: str  # plural, e.g. "jobs"
    subresource: str | None = None  # e.g. "status"
    namespace: str | None = None  # None: cluster-scoped or across all namespaces
    name: str | None = None

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def verb_of(method: str, *, named: bool, watch: bool = False) -> str:
    """The RBAC verb of an HTTP request to a resource URL (named: the URL ends in an object name)."""
    method = method.upper()
    if method == "GET":
        return "watch" if watch else ("get" if named else "list")
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    raise ValueError(f"no RBAC verb for HTTP method {method}")


@dataclass(frozen=True)
class Grant:
    """One rule of a Role (namespace set) or ClusterRole (namespace None), bound to the subject."""

    kind: str  # "Role" or "ClusterRole"
    role: str
    namespace: str | None
    index: int
    rule: dict[str, Any]

    def allows(self, req: Request) -> bool:
        rule = self.rule
        if self.namespace is not None and req.namespace != self.namespace:
            return False
        if req.verb not in rule.get("verbs", []) and "*" not in rule.get("verbs", []):
            return False
        groups = rule.get("apiGroups", [])
        if req.group not in groups and "*" not in groups:
            return False
        resources = rule.get("resources", [])
        if req.full_resource not in resources and "*" not in resources:
            return False
        names = rule.get("resourceNames")
        # resourceNames never match list/watch/create of a collection without a name.
        return not (names and (req.name is None or req.name not in names))


def grants_for(objects: Iterable[dict[str, Any]], sa_namespace: str, sa_name: str) -> list[Grant]:
    """Every rule bound to the ServiceAccount by the (Cluster)RoleBindings among objects."""
    objects = list(objects)
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects if o.get("kind") in ("Role", "ClusterRole")}
    grants: list[Grant] = []
    for binding in objects:
        if binding.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name
                   and s.get("namespace") == sa_namespace for s in binding.get("subjects", [])):
            continue
        ref = binding["roleRef"]
        binding_ns = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role_ns = binding_ns if ref["kind"] == "Role" else None
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        if role is None:
            continue
        for index, rule in enumerate(role.get("rules", [])):
            grants.append(Grant(ref["kind"], ref["name"], binding_ns, index, rule))
    return grants


def allowed_by(grants: list[Grant], req: Request) -> list[Grant]:
    return [g for g in grants if g.allows(req)]


def unused_rules(grants: list[Grant], requests: Iterable[Request]) -> list[tuple[Grant, str, str]]:
    """(grant, resource, verb) triples that no request exercised: the RBAC grants more than is used."""
    requests = list(requests)
    unused = []
    for grant in grants:
        for group in grant.rule.get("apiGroups", []):
            for resource in grant.rule.get("resources", []):
                base, _, sub = resource.partition("/")
                for verb in grant.rule.get("verbs", []):
                    probe_hits = [r for r in requests if r.verb == verb and r.group == group
                                  and r.full_resource == (f"{base}/{sub}" if sub else base) and grant.allows(r)]
                    if not probe_hits:
                        unused.append((grant, resource, verb))
    return unused
