"""What kubectl asks a cluster for besides objects: discovery, Table rows and OpenAPI documents.

Why it exists: kubectl resolves every resource name through discovery, prints ``get`` output from
the server's ``meta.k8s.io/v1`` Table (a client of 1.32 has no printers of its own), validates
``apply`` client-side against ``/openapi/v2`` (protobuf only) and ``explain``s from ``/openapi/v3``
(1.27+) or ``/openapi/v2`` (Debian's 1.20). kmock's own discovery puts ``/v1`` as the core group
version (so kubectl ignores every core resource), lists short names on ``*/status`` (a warning on
every call) and offers metrics.k8s.io, which nothing serves. These functions build what a real API
server sends, from the served resources and the CRDs' schemas and printer columns.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

SERVER_VERSION = "v1.26.4"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# Groups a real cluster lists in this order; groups not named here follow, CRDs' groups last.
_GROUP_ORDER = ["", "apiregistration.k8s.io", "apps", "events.k8s.io", "authentication.k8s.io",
                "authorization.k8s.io", "autoscaling", "batch", "certificates.k8s.io", "networking.k8s.io",
                "policy", "rbac.authorization.k8s.io", "storage.k8s.io", "admissionregistration.k8s.io",
                "apiextensions.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "node.k8s.io",
                "discovery.k8s.io", "flowcontrol.apiserver.k8s.io"]
# Aggregated APIs that nothing here serves: listing them would make kubectl resolve names to them
# (``kubectl get nodes`` went to metrics.k8s.io).
UNSERVED_GROUPS = frozenset({"metrics.k8s.io"})


@dataclass(frozen=True)
class Served:
    """One served resource, as discovery describes it."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    verbs: frozenset[str]
    shortnames: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()


# ---- discovery ---------------------------------------------------------------------------------


def _group_rank(group: str, crd_groups: set[str]) -> tuple[int, int, str]:
    if group in crd_groups:
        return (2, 0, group)
    if group in _GROUP_ORDER:
        return (0, _GROUP_ORDER.index(group), group)
    return (1, 0, group)


def _version_rank(version: str) -> tuple[int, int, int]:
    """Kubernetes version priority: GA before beta before alpha, higher numbers first."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0)
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0))


def api_versions() -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}


def api_group_list(served: Iterable[Served], crd_groups: set[str]) -> dict[str, Any]:
    versions: dict[str, set[str]] = {}
    for s in served:
        if s.group and s.group not in UNSERVED_GROUPS:
            versions.setdefault(s.group, set()).add(s.version)
    groups = [api_group(g, versions[g]) for g in sorted(versions, key=lambda g: _group_rank(g, crd_groups))]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str, versions: Iterable[str]) -> dict[str, Any]:
    ordered = sorted(versions, key=_version_rank)
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries,
            "preferredVersion": entries[0]}


def api_resource_list(served: Iterable[Served], group: str, version: str) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for s in sorted(served, key=lambda s: s.plural):
        if (s.group, s.version) != (group, version):
            continue
        entry: dict[str, Any] = {"name": s.plural, "singularName": s.singular, "namespaced": s.namespaced,
                                 "kind": s.kind, "verbs": sorted(s.verbs)}
        if s.shortnames:
            entry["shortNames"] = list(s.shortnames)
        if s.categories:
            entry["categories"] = list(s.categories)
        resources.append(entry)
        for sub in s.subresources:
            # A subresource has no short names or categories: listing them made kubectl warn
            # 'short name "nap" could also match lower priority resource nodeauditpolicies/status'.
            verbs = ["get", "patch", "update"] if sub in ("status", "scale") else ["create", "get"]
            resources.append({"name": f"{s.plural}/{sub}", "singularName": "", "namespaced": s.namespaced,
                              "kind": "Scale" if sub == "scale" else s.kind, "verbs": verbs})
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": resources}


# ---- Table (kubectl get) -------------------------------------------------------------------------


def wants_table(accept: str) -> bool:
    """True when the Accept header asks for a meta.k8s.io Table (what ``kubectl get`` sends)."""
    return any("as=Table" in part for part in accept.split(","))


def human_duration(seconds: float) -> str:
    """Kubernetes' HumanDuration (k8s.io/apimachinery/pkg/util/duration), as AGE columns show it."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, days = hours // 24 // 365, (hours // 24) % 365
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{hours // 24 // 365}y"


def _age(timestamp: Any, now: datetime.datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(str(timestamp), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<unknown>"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return human_duration((now - then).total_seconds())


_JSONPATH_TOKEN = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]")


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The values a CRD printer column's jsonPath selects: ``.a.b``, ``[0]``, ``[*]`` and
    ``[?(@.field=="value")]`` (the subset CRDs use; kubectl's full grammar is not needed here)."""
    values = [obj]
    pos = 0
    while pos < len(path):
        m = _JSONPATH_TOKEN.match(path, pos)
        if m is None:
            raise ValueError(f"unsupported jsonPath {path!r} at {pos}")
        pos = m.end()
        nxt: list[Any] = []
        for v in values:
            if m.group(1) is not None:
                if isinstance(v, dict) and m.group(1) in v:
                    nxt.append(v[m.group(1)])
            elif m.group(2) is not None:
                if isinstance(v, list):
                    nxt.extend(v if m.group(2) == "*" else v[int(m.group(2)):int(m.group(2)) + 1])
            elif isinstance(v, list):
                key, want = m.group(3), m.group(4)
                nxt.extend(item for item in v if str(_dig(item, key)) == want)
        values = nxt
    return values


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _column(name: str, type_: str = "string", description: str = "", priority: int = 0,
            fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": type_, "format": fmt, "description": description, "priority": priority}


NAME_COLUMN = _column("Name", fmt="name", description="Name must be unique within a namespace.")
AGE_COLUMN = _column("Age", description="CreationTimestamp is a timestamp representing the server time "
                                        "when this object was created.")


@dataclass
class Printer:
    """Columns and a row function for one resource, like the API server's table convertor."""

    columns: list[dict[str, Any]]
    cells: Callable[[dict[str, Any]], list[Any]]
    crd_columns: list[dict[str, Any]] = field(default_factory=list)


def crd_printer(columns: list[dict[str, Any]]) -> Printer:
    """A CRD's additionalPrinterColumns (Name first; date columns shown as an age, like the server)."""
    defs = [NAME_COLUMN] + [_column(c["name"], c.get("type", "string"), c.get("description", ""),
                                    int(c.get("priority", 0)), c.get("format", "")) for c in columns]
    for d in defs[1:]:
        if d["type"] == "date":
            d["type"], d["format"] = "string", ""

    def cells(obj: dict[str, Any]) -> list[Any]:
        row: list[Any] = [obj["metadata"]["name"]]
        for c in columns:
            try:
                found = jsonpath(obj, c["jsonPath"])
            except ValueError:
                found = []
            if not found or found[0] is None:
                row.append(None)
            elif c.get("type") == "date":
                row.append(_age(found[0]))
            elif c.get("type") in ("integer", "number") and isinstance(found[0], (int, float)):
                row.append(found[0])
            else:
                row.append(found[0] if isinstance(found[0], (str, bool, int, float)) else json.dumps(found[0]))
        return row

    return Printer(defs, cells)


def _node_cells(obj: dict[str, Any]) -> list[Any]:
    status = obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = "Unknown" if ready is None else ("Ready" if ready.get("status") == "True" else "NotReady")
    if (obj.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = obj["metadata"].get("labels") or {}
    roles = sorted({k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")} |
                   ({labels["kubernetes.io/role"]} if labels.get("kubernetes.io/role") else set()))
    info = status.get("nodeInfo") or {}
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    return [obj["metadata"]["name"], state, ",".join(r for r in roles if r) or "<none>",
            _age(obj["metadata"].get("creationTimestamp")), info.get("kubeletVersion", ""),
            addresses.get("InternalIP", "<none>"), addresses.get("ExternalIP", "<none>"),
            info.get("osImage", "<unknown>"), info.get("kernelVersion", "<unknown>"),
            info.get("containerRuntimeVersion", "<unknown>")]


def _job_cells(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    state = ("Complete" if conds.get("Complete") == "True" else "Failed" if conds.get("Failed") == "True"
             else "Suspended" if spec.get("suspend") else "Running")
    completions = f"{status.get('succeeded', 0)}/{spec.get('completions', 1)}"
    duration = ""
    if status.get("startTime"):
        start = datetime.datetime.strptime(status["startTime"], "%Y-%m-%dT%H:%M:%SZ")
        end_text = status.get("completionTime")
        end = (datetime.datetime.strptime(end_text, "%Y-%m-%dT%H:%M:%SZ") if end_text
               else datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None))
        duration = human_duration((end - start).total_seconds())
    return [obj["metadata"]["name"], state, completions, duration, _age(obj["metadata"].get("creationTimestamp"))]


def _pod_cells(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    return [obj["metadata"]["name"], f"{ready}/{len(spec.get('containers') or [])}",
            status.get("reason") or status.get("phase") or "Pending", restarts,
            _age(obj["metadata"].get("creationTimestamp")), status.get("podIP") or "<none>",
            spec.get("nodeName") or "<none>"]


def _event_cells(obj: dict[str, Any]) -> list[Any]:
    involved = obj.get("involvedObject") or obj.get("regarding") or {}
    seen = obj.get("lastTimestamp") or obj.get("eventTime") or obj["metadata"].get("creationTimestamp")
    return [_age(seen), obj.get("type", ""), obj.get("reason", ""),
            f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
            obj.get("message") or obj.get("note") or "", obj["metadata"]["name"]]


def _age_cell(obj: dict[str, Any]) -> str:
    return _age(obj["metadata"].get("creationTimestamp"))


BUILTIN_PRINTERS: dict[tuple[str, str], Printer] = {
    ("", "nodes"): Printer([NAME_COLUMN, _column("Status"), _column("Roles"), AGE_COLUMN, _column("Version"),
                            _column("Internal-IP", priority=1), _column("External-IP", priority=1),
                            _column("OS-Image", priority=1), _column("Kernel-Version", priority=1),
                            _column("Container-Runtime", priority=1)], _node_cells),
    ("", "configmaps"): Printer([NAME_COLUMN, _column("Data", "integer"), AGE_COLUMN],
                                lambda o: [o["metadata"]["name"],
                                           len(o.get("data") or {}) + len(o.get("binaryData") or {}), _age_cell(o)]),
    ("", "namespaces"): Printer([NAME_COLUMN, _column("Status"), AGE_COLUMN],
                                lambda o: [o["metadata"]["name"], (o.get("status") or {}).get("phase", "Active"),
                                           _age_cell(o)]),
    ("", "pods"): Printer([NAME_COLUMN, _column("Ready"), _column("Status"), _column("Restarts", "integer"),
                           AGE_COLUMN, _column("IP", priority=1), _column("Node", priority=1)], _pod_cells),
    ("", "events"): Printer([_column("Last Seen"), _column("Type"), _column("Reason"), _column("Object"),
                             _column("Message"), _column("Name", fmt="name", priority=1)], _event_cells),
    ("batch", "jobs"): Printer([NAME_COLUMN, _column("Status"), _column("Completions"), _column("Duration"),
                                AGE_COLUMN], _job_cells),
}
DEFAULT_PRINTER = Printer([NAME_COLUMN, AGE_COLUMN], lambda o: [o["metadata"]["name"], _age_cell(o)])


def table(printer: Printer, objects: Iterable[dict[str, Any]], resource_version: str,
          include_object: str = "Metadata") -> dict[str, Any]:
    """A meta.k8s.io/v1 Table of ``objects``; each row carries its object's metadata (kubectl needs
    the namespace for ``-A``) or, with ``includeObject=Object``, the whole object."""
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": printer.cells(obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj.get("metadata") or {}}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": printer.columns, "rows": rows}


# ---- OpenAPI -----------------------------------------------------------------------------------


def definition_name(group: str, version: str, kind: str) -> str:
    """The name a real server gives a kind's schema: reversed group, e.g. io.nodeaudit.v1alpha1.X."""
    if not group:
        return f"io.k8s.api.core.{version}.{kind}"
    return ".".join(reversed(group.split("."))) + f".{version}.{kind}"


def _object_meta() -> dict[str, Any]:
    text = {"type": "string"}
    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all "
                       "objects users must create.",
        "properties": {
            "name": {**text, "description": "Name must be unique within a namespace."},
            "generateName": {**text, "description": "A prefix the server uses to generate a unique name."},
            "namespace": {**text, "description": "Namespace defines the space within which each name must be unique."},
            "labels": {**strings, "description": "Map of string keys and values used to organize and select objects."},
            "annotations": {**strings, "description": "Unstructured key value map stored with a resource."},
            "uid": {**text, "description": "UID is the unique in time and space value for this object."},
            "resourceVersion": {**text, "description": "An opaque value that represents the internal version of "
                                                       "this object."},
            "generation": {"type": "integer", "format": "int64",
                           "description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": {**text, "format": "date-time",
                                  "description": "The server time when this object was created."},
            "deletionTimestamp": {**text, "format": "date-time",
                                  "description": "The time after which this resource will be deleted."},
            "finalizers": {"type": "array", "items": text,
                           "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                "description": "List of objects depended by this object."},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                              "description": "Maps workflow-id and version to the set of fields managed by that workflow."},
        },
    }


@dataclass(frozen=True)
class KindSchema:
    group: str
    version: str
    kind: str
    schema: dict[str, Any]
    plural: str = ""
    namespaced: bool = False


def _with_meta(kind: KindSchema, ref_prefix: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(json.dumps(kind.schema))
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": "APIVersion defines the versioned schema of this "
                                                           "representation of an object."}
    props["kind"] = {"type": "string", "description": "Kind is a string value representing the REST resource "
                                                     "this object represents."}
    props["metadata"] = {"$ref": ref_prefix + OBJECT_META,
                         "description": "Standard object's metadata."}
    schema["type"] = "object"
    schema["x-kubernetes-group-version-kind"] = [{"group": kind.group, "kind": kind.kind, "version": kind.version}]
    return schema


def openapi_v3_index(group_versions: Iterable[tuple[str, str]], docs: dict[str, bytes]) -> dict[str, Any]:
    paths = {}
    for group, version in group_versions:
        key = f"apis/{group}/{version}" if group else f"api/{version}"
        digest = hashlib.sha512(docs.get(key, b"")).hexdigest()[:32].upper()
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}


def openapi_v3_document(kinds: Iterable[KindSchema]) -> dict[str, Any]:
    """The OpenAPI v3 document of one group version (``kubectl explain`` of 1.27+ reads it)."""
    schemas = {OBJECT_META: _object_meta()}
    paths: dict[str, Any] = {}
    for k in kinds:
        name = definition_name(k.group, k.version, k.kind)
        schemas[name] = _with_meta(k, "#/components/schemas/")
        # explain finds a resource's kind through the GET operation of its path (no PATCH operation is
        # published: the server does no field validation, so kubectl validates apply client-side).
        prefix = f"/apis/{k.group}/{k.version}" if k.group else f"/api/{k.version}"
        scope = "/namespaces/{namespace}" if k.namespaced else ""
        paths[f"{prefix}{scope}/{k.plural}/{{name}}"] = {"get": {
            "operationId": f"read{k.kind}",
            "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
            "responses": {"200": {"description": "OK", "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{name}"}}}}}}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION}, "paths": paths,
            "components": {"schemas": schemas}}


def _v2_schema(schema: Any) -> Any:
    """A v3 (structural CRD) schema as OpenAPI v2 publishes it: what v2 cannot say is dropped, as the
    API server does (nullable, anyOf/oneOf/not; int-or-string loses its type)."""
    if isinstance(schema, list):
        return [_v2_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _v2_schema(v) for k, v in schema.items()
           if k not in ("nullable", "anyOf", "oneOf", "not", "x-kubernetes-validations")}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if out.get("x-kubernetes-preserve-unknown-fields") and "properties" not in out:
        out.pop("type", None)  # kubectl would refuse every field of an object it knows no fields of
    return out


def openapi_v2_document(kinds: Iterable[KindSchema]) -> dict[str, Any]:
    definitions = {OBJECT_META: _v2_schema(_object_meta())}
    for k in kinds:
        definitions[definition_name(k.group, k.version, k.kind)] = _v2_schema(_with_meta(k, "#/definitions/"))
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION}, "paths": {},
            "definitions": definitions}


# OpenAPI v2 in protobuf: client-go's OpenAPISchema() asks for
# application/com.github.proto-openapi.spec.v2@v1.0+protobuf and accepts nothing else.
# Field numbers from gnostic's openapiv2/OpenAPIv2.proto (messages Document, Schema, NamedSchema, ...).
PROTOBUF_V2 = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_str(number: int, text: str) -> bytes:
    return _field_bytes(number, text.encode())


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_double(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", value)


def _any_yaml(value: Any) -> bytes:
    return _field_str(2, yaml.safe_dump(value, default_flow_style=False).rstrip("\n")
                      if isinstance(value, (dict, list)) else json.dumps(value))


_SCHEMA_STRINGS = {"$ref": 1, "format": 2, "title": 3, "description": 4, "pattern": 13, "discriminator": 26}
_SCHEMA_DOUBLES = {"multipleOf": 6, "maximum": 7, "minimum": 9}
_SCHEMA_BOOLS = {"exclusiveMaximum": 8, "exclusiveMinimum": 10, "uniqueItems": 16, "readOnly": 27}
_SCHEMA_INTS = {"maxLength": 11, "minLength": 12, "maxItems": 14, "minItems": 15, "maxProperties": 17,
                "minProperties": 18}


def schema_protobuf(schema: dict[str, Any]) -> bytes:
    """One JSON schema as a gnostic openapi_v2.Schema message."""
    out = bytearray()
    for key, value in schema.items():
        if key in _SCHEMA_STRINGS:
            out += _field_str(_SCHEMA_STRINGS[key], str(value))
        elif key in _SCHEMA_DOUBLES:
            out += _field_double(_SCHEMA_DOUBLES[key], float(value))
        elif key in _SCHEMA_BOOLS:
            out += _field_varint(_SCHEMA_BOOLS[key], int(bool(value)))
        elif key in _SCHEMA_INTS:
            out += _field_varint(_SCHEMA_INTS[key], int(value))
        elif key == "default":
            out += _field_bytes(5, _any_yaml(value))
        elif key == "required":
            for name in value:
                out += _field_str(19, name)
        elif key == "enum":
            for item in value:
                out += _field_bytes(20, _any_yaml(item))
        elif key == "additionalProperties":
            inner = (_field_bytes(1, schema_protobuf(value)) if isinstance(value, dict)
                     else _field_varint(2, int(bool(value))))
            out += _field_bytes(21, inner)
        elif key == "type":
            out += _field_bytes(22, b"".join(_field_str(1, t) for t in ([value] if isinstance(value, str) else value)))
        elif key == "items":
            items = value if isinstance(value, list) else [value]
            out += _field_bytes(23, b"".join(_field_bytes(1, schema_protobuf(i)) for i in items))
        elif key == "allOf":
            for sub in value:
                out += _field_bytes(24, schema_protobuf(sub))
        elif key == "properties":
            out += _field_bytes(25, b"".join(_field_bytes(1, _field_str(1, name) + _field_bytes(2, schema_protobuf(sub)))
                                             for name, sub in value.items()))
        elif key.startswith("x-"):
            out += _field_bytes(31, _field_str(1, key) + _field_bytes(2, _any_yaml(value)))
    return bytes(out)


def openapi_v2_protobuf(document: dict[str, Any]) -> bytes:
    """An OpenAPI v2 document (as built by :func:`openapi_v2_document`) as a gnostic Document."""
    info = document.get("info") or {}
    out = _field_str(1, document.get("swagger", "2.0"))
    out += _field_bytes(2, _field_str(1, info.get("title", "")) + _field_str(2, info.get("version", "")))
    out += _field_bytes(8, b"")
    out += _field_bytes(9, b"".join(_field_bytes(1, _field_str(1, name) + _field_bytes(2, schema_protobuf(s)))
                                    for name, s in (document.get("definitions") or {}).items()))
    return out
