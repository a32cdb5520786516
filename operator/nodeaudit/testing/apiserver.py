"""A small, fast, in-memory Kubernetes API server for tests, the demo and the benchmark.

Why it exists: no real kube-apiserver can run here (DESIGN.md). kmock 0.8 serves the real HTTP
API and discovery, but assigns no uid/resourceVersion/generation/creationTimestamp, ignores label
and field selectors, cannot resume a watch, has no generateName, no status subresource and scans
every stored object (and its whole request log) on every request, so 1,000 creates take ~90 s.

This subclass keeps kmock for what it does well (the HTTP server, request parsing, API discovery
from ``kmock.resources``) and serves every resource request itself from a dict keyed by
(resource, namespace, name):

* uid, resourceVersion (one global counter), generation (bumped on non-metadata/status changes
  only), creationTimestamp, generateName;
* label selectors (=, ==, !=, in, notin, exists, !exists) and field selectors (any dotted path,
  e.g. ``spec.nodeName``, ``metadata.name``), on list and watch;
* watch from a resourceVersion (replayed from a bounded history, 410 Gone when too old), or a
  consistent snapshot + live events when no resourceVersion is given; ``timeoutSeconds``;
* the status subresource (main writes keep status, /status writes change only status);
* merge, strategic-merge (treated as merge) and JSON patches (incl. ``test``), PUT with
  resourceVersion conflict checks, finalizers/deletionTimestamp, ownerReference cascading;
* the request log is cleared after every request; a compact log of (verb, group, resource,
  namespace, subresource, name, agent) is kept instead for the RBAC check and write counting.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import dataclasses
import datetime
import json
import random
import re
import string
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
import kmock

from nodeaudit.testing import apidocs

ResKey = tuple[str, str, str]  # group, version, plural
ObjKey = tuple[ResKey, str | None, str]  # resource, namespace, name
CRD_RES: ResKey = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")

HISTORY_LIMIT = 200_000


@dataclass(frozen=True)
class LogEntry:
    """One API request as the RBAC check and the write counter need it."""

    verb: str  # get list watch create update patch delete
    group: str
    resource: str
    namespace: str | None
    subresource: str | None
    name: str | None
    agent: str  # "kopf", "nodeaudit", "kubernetes-client", ...
    status: int = 0


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _copy(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _get_path(obj: Any, path: str) -> Any:
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


# ---------------------------------------------------------------------------------------------
# Selectors

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text: str | None) -> Callable[[dict[str, str]], bool]:
    """Compile a Kubernetes label selector string into a predicate over a labels dict."""
    if not text:
        return lambda labels: True
    tests: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_selector(text):
        m = _SET_RE.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            tests.append(_label_test("in" if op == "in" else "notin", key, values))
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            tests.append(_label_test("notin", key, {value}))
        elif "==" in term or "=" in term:
            key, value = (s.strip() for s in re.split(r"==?", term, maxsplit=1))
            tests.append(_label_test("in", key, {value}))
        elif term.startswith("!"):
            tests.append(_label_test("absent", term[1:].strip()))
        else:
            tests.append(_label_test("exists", term))
    return lambda labels: all(t(labels) for t in tests)


def _label_test(op: str, key: str, values: frozenset[str] | set[str] = frozenset()) -> Callable[[dict[str, str]], bool]:
    """One term of a label selector: the key's value is (not) one of ``values``, or it is (not) set."""
    if op == "in":
        return lambda labels: labels.get(key) in values
    if op == "notin":
        return lambda labels: labels.get(key) not in values
    if op == "absent":
        return lambda labels: key not in labels
    return lambda labels: key in labels


def parse_field_selector(text: str | None) -> Callable[[dict[str, Any]], bool]:
    """Compile a field selector (``a.b=v``, ``a.b==v``, ``a.b!=v``, comma-joined) into a predicate."""
    if not text:
        return lambda obj: True
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for term in _split_selector(text):
        negate = "!=" in term
        path, value = (s.strip() for s in (term.split("!=", 1) if negate else re.split(r"==?", term, maxsplit=1)))
        tests.append(_field_test(path, value, negate))
    return lambda obj: all(t(obj) for t in tests)


def _field_test(path: str, value: str, negate: bool) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (str(_get_path(obj, path) or "") == value) != negate


# ---------------------------------------------------------------------------------------------
# Patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patches: lists are replaced)."""
    if not isinstance(patch, dict):
        return _copy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, test (what kopf and kubectl send)."""
    doc = _copy(target)
    for op in ops:
        parts = _pointer(op["path"])
        parent: Any = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1] if parts else ""
        kind = op["op"]
        try:
            if kind == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
                if current != op.get("value"):
                    raise ApiError(422, "Invalid", f"test operation failed at {op['path']}")
            elif kind in ("add", "replace"):
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(op["value"])
                    elif kind == "add":
                        parent.insert(int(last), op["value"])
                    else:
                        parent[int(last)] = op["value"]
                else:
                    parent[last] = op["value"]
            elif kind == "remove":
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            else:
                raise ApiError(422, "Invalid", f"unsupported JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "Invalid", f"JSON patch failed at {op['path']}: {e!r}") from e
    return doc


# ---------------------------------------------------------------------------------------------


@dataclass
class _Watcher:
    res: ResKey
    namespace: str | None
    labels: Callable[[dict[str, str]], bool]
    fields: Callable[[dict[str, Any]], bool]
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)

    def matches(self, ns: str | None, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and ns != self.namespace:
            return False
        return self.labels(obj.get("metadata", {}).get("labels") or {}) and self.fields(obj)


def _agent(headers: Any) -> str:
    ua = str(headers.get("User-Agent", "") or "")
    for name in ("nodeaudit-sim", "nodeaudit", "kopf", "kubectl", "OpenAPI-Generator"):
        if ua.startswith(name) or f" {name}" in ua:
            return "kubernetes-client" if name == "OpenAPI-Generator" else name
    return ua.split("/")[0] or "unknown"


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesScaffold):
    """kmock's scaffold (HTTP + discovery) with a fast, stateful Kubernetes object store."""

    objects: dict[ObjKey, dict[str, Any]] = attrs.field(factory=dict, init=False)
    log: list[LogEntry] = attrs.field(factory=list, init=False)
    rv: int = attrs.field(default=1, init=False)
    _history: dict[ResKey, collections.deque[tuple[int, str, str | None, dict[str, Any]]]] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=HISTORY_LIMIT)), init=False)
    _watchers: dict[ResKey, list[_Watcher]] = attrs.field(
        factory=lambda: collections.defaultdict(list), init=False)
    _by_res: dict[ResKey, dict[tuple[str | None, str], dict[str, Any]]] = attrs.field(
        factory=lambda: collections.defaultdict(dict), init=False)
    listeners: list[Callable[[ResKey, str, dict[str, Any]], None]] = attrs.field(factory=list, init=False)
    _info_cache: dict[ResKey, kmock.ResourceInfo | None] = attrs.field(factory=dict, init=False)
    # What kubectl needs beyond objects (see apidocs): printer columns and schemas of the CRDs.
    _printers: dict[ResKey, apidocs.Printer] = attrs.field(factory=dict, init=False)
    _schemas: dict[tuple[str, str, str], apidocs.KindSchema] = attrs.field(factory=dict, init=False)
    _crd_groups: set[str] = attrs.field(factory=set, init=False)
    _openapi_cache: dict[str, bytes] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()

    # ---- discovery helpers ----------------------------------------------------------------

    def add_crd(self, crd: dict[str, Any]) -> None:
        """Serve a CustomResourceDefinition's resource (discovery + storage) and store the CRD."""
        self.put_object(CRD_RES, None, crd)  # _create registers it, as for a CRD posted over HTTP

    def _register_crd(self, crd: dict[str, Any]) -> None:
        """Discovery, printer columns and OpenAPI schema for a CRD, like the real server starts serving
        a CRD's resource once it is created."""
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        if not spec.get("group") or not names.get("plural") or not names.get("kind"):
            return
        self._crd_groups.add(spec["group"])
        for version in spec.get("versions") or []:
            subresources = set((version.get("subresources") or {}).keys())
            res = (spec["group"], version["name"], names["plural"])
            self.resources[f"{spec['group']}/{version['name']}/{names['plural']}"] = kmock.ResourceInfo(
                kind=names["kind"], singular=names.get("singular", names["kind"].lower()),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=set(names.get("shortNames", [])), categories=set(names.get("categories", [])),
                subresources=subresources,
                verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
            )
            columns = version.get("additionalPrinterColumns")
            self._printers[res] = apidocs.crd_printer(columns) if columns else apidocs.DEFAULT_PRINTER
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if schema:
                key = (spec["group"], version["name"], names["kind"])
                self._schemas[key] = apidocs.KindSchema(*key, schema, names["plural"],
                                                        spec.get("scope", "Namespaced") == "Namespaced")
        self._info_cache.clear()
        self._openapi_cache.clear()

    def info(self, res: ResKey) -> kmock.ResourceInfo | None:
        try:
            return self._info_cache[res]
        except KeyError:
            key = kmock.resource(*res)
            found = self.resources[key] if key in self.resources else None  # noqa: SIM401 - not a dict
            self._info_cache[res] = found
            return found

    # ---- in-process store API (simulators, fixtures) -------------------------------------

    # kmock's own get() is its HTTP client helper (unused here); the store's get is this one.
    def get(self, res: ResKey, namespace: str | None, name: str) -> dict[str, Any] | None:  # type: ignore[override]
        return self._by_res[res].get((namespace, name))

    def list(self, res: ResKey, namespace: str | None = None) -> list[dict[str, Any]]:
        return [o for (ns, _), o in self._by_res[res].items() if namespace is None or ns == namespace]

    def put_object(self, res: ResKey, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        return self._create(res, namespace, _copy(obj))

    def patch_object(self, res: ResKey, namespace: str | None, name: str, patch: dict[str, Any],
                     subresource: str | None = None) -> dict[str, Any]:
        return self._update(res, namespace, name, lambda o: merge_patch(o, patch), subresource, None)

    def delete_object(self, res: ResKey, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._delete(res, namespace, name)

    def writes(self, agent: str | None = None) -> builtins.list[LogEntry]:  # list: the method above
        return [e for e in self.log if e.verb in ("create", "update", "patch", "delete")
                and (agent is None or e.agent == agent)]

    # ---- store internals -----------------------------------------------------------------

    def _emit(self, res: ResKey, kind: str, ns: str | None, obj: dict[str, Any],
              old: dict[str, Any] | None = None) -> None:
        self._history[res].append((self.rv, kind, ns, obj))
        for w in self._watchers.get(res, ()):
            now_m = w.matches(ns, obj)
            old_m = w.matches(ns, old) if old is not None else now_m
            if kind == "MODIFIED" and now_m != old_m:
                w.queue.put_nowait({"type": "ADDED" if now_m else "DELETED", "object": obj})
            elif now_m:
                w.queue.put_nowait({"type": kind, "object": obj})
        for listener in self.listeners:
            listener(res, kind, obj)

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _create(self, res: ResKey, ns: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        info = self.info(res)
        meta = obj.setdefault("metadata", {})
        ns = self._key_ns(res, ns)
        if ns is not None:
            meta["namespace"] = ns
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
            meta["name"] = prefix + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        key = (ns, meta["name"])
        if key in self._by_res[res]:
            raise ApiError(409, "AlreadyExists", f'{res[2]} "{meta["name"]}" already exists')
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_rv()
        meta.pop("deletionTimestamp", None)
        if info is not None and info.kind:
            obj.setdefault("kind", info.kind)
            obj.setdefault("apiVersion", f"{res[0]}/{res[1]}" if res[0] else res[1])
        self._by_res[res][key] = obj
        self.objects[(res, ns, meta["name"])] = obj
        if res == CRD_RES:
            self._register_crd(obj)
        self._emit(res, "ADDED", ns, obj)
        return obj

    def _update(self, res: ResKey, ns: str | None, name: str,
                change: Callable[[dict[str, Any]], dict[str, Any]], subresource: str | None,
                expected_rv: str | None) -> dict[str, Any]:
        info = self.info(res)
        ns = self._key_ns(res, ns)
        old = self._get_checked(res, ns, name)
        if expected_rv and expected_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'the object "{name}" has been modified; please apply your '
                                            "changes to the latest version and try again")
        new = change(_copy(old))
        has_status = info is not None and "status" in info.subresources
        if subresource == "status":
            merged = _copy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        elif has_status:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "name", "namespace", "generation", "resourceVersion",
                  "deletionTimestamp"):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
            else:
                meta.pop(k, None)
        if new == old:
            return old  # a no-op write changes nothing, like the real API server
        strip = ("metadata", "status")
        if {k: v for k, v in new.items() if k not in strip} != {k: v for k, v in old.items() if k not in strip}:
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = self._next_rv()
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(res, ns, name, new)
            return new
        self._by_res[res][(ns, name)] = new
        self.objects[(res, ns, name)] = new
        if res == CRD_RES:
            self._register_crd(new)
        self._emit(res, "MODIFIED", ns, new, old)
        return new

    def _remove(self, res: ResKey, ns: str | None, name: str, last: dict[str, Any]) -> None:
        self._by_res[res].pop((ns, name), None)
        self.objects.pop((res, ns, name), None)
        self._emit(res, "DELETED", ns, last)
        uid = last["metadata"].get("uid")
        if uid:  # the garbage collector: dependents go with their owner
            for (dres, dns, dname), dobj in list(self.objects.items()):
                refs = dobj.get("metadata", {}).get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    with contextlib.suppress(ApiError):
                        self._delete(dres, dns, dname)

    def _delete(self, res: ResKey, ns: str | None, name: str) -> dict[str, Any]:
        ns = self._key_ns(res, ns)
        old = self._get_checked(res, ns, name)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp"):
                return old
            new: dict[str, Any] = _copy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._by_res[res][(ns, name)] = new
            self.objects[(res, ns, name)] = new
            self._emit(res, "MODIFIED", ns, new, old)
            return new
        final: dict[str, Any] = _copy(old)
        final["metadata"]["resourceVersion"] = self._next_rv()
        self._remove(res, ns, name, final)
        return final

    # ---- HTTP -------------------------------------------------------------------------------

    @staticmethod
    def _parse(path: str) -> tuple[ResKey, str | None, str | None, str | None] | None:
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest:
            return None
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = "/".join(rest[2:]) or None
        return (group, version, plural), ns, name, sub

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve discovery, OpenAPI and resource requests from the store; leave the rest to kmock."""
        docs = self._serve_docs(raw)
        if docs is not None:
            return docs
        parsed = self._parse(raw.path)
        if parsed is None or self.info(parsed[0]) is None:
            try:
                return await super().__call__(raw)
            finally:
                self._requests.clear()  # kmock matches every request against this log: keep it empty
        return await self._serve(raw, *parsed)

    async def _serve(self, raw: aiohttp.web.BaseRequest, res: ResKey, ns: str | None, name: str | None,
                     sub: str | None) -> aiohttp.web.StreamResponse:
        method = raw.method.upper()
        params = dict(raw.query)
        watch = params.get("watch") in ("true", "1")
        verb = {"GET": "watch" if watch else ("get" if name else "list"), "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())
        entry = LogEntry(verb, res[0], res[2], ns, sub, name, _agent(raw.headers))
        self.log.append(entry)
        try:
            if verb == "watch":
                as_table = apidocs.wants_table(raw.headers.get("Accept", "")) and not sub
                return await self._serve_watch_stream(raw, res, ns, params, as_table)
            as_table = apidocs.wants_table(raw.headers.get("Accept", ""))
            if verb == "list":
                body = self._list_body(res, ns, params)
                return self._json(self._table(res, body["items"], params) if as_table and not sub else body)
            if verb == "get":
                obj = self._get_checked(res, ns, name)
                return self._json(self._table(res, [obj], params) if as_table and not sub else obj)
            if "protobuf" in raw.headers.get("Content-Type", "") or "cbor" in raw.headers.get("Content-Type", ""):
                # What a server without protobuf says: clients then send JSON.
                raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                                            "accepted media types include: application/json, "
                                                            "application/merge-patch+json, application/json-patch+json")
            text = (await raw.read()).decode() if raw.can_read_body else ""
            try:
                body = json.loads(text) if text else None
            except ValueError as e:
                raise ApiError(400, "BadRequest", f"invalid JSON: {e}") from e
            if verb == "create":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a JSON object is required")
                return self._json(self._create(res, ns, body), 201)
            if verb == "update":
                assert name is not None
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a JSON object is required")
                rv = (body.get("metadata") or {}).get("resourceVersion")
                return self._json(self._update(res, ns, name, lambda o: _copy(body), sub, rv))
            if verb == "patch":
                assert name is not None
                ctype = raw.headers.get("Content-Type", "")
                if "json-patch" in ctype:
                    ops = body if isinstance(body, list) else []
                    return self._json(self._update(res, ns, name, lambda o: json_patch(o, ops), sub, None))
                return self._json(self._update(res, ns, name, lambda o: merge_patch(o, body or {}), sub, None))
            if verb == "delete":
                assert name is not None
                return self._json(self._delete(res, ns, name))
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")
        except ApiError as e:
            self.log[-1] = dataclasses.replace(entry, status=e.code)
            return self._json({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                               "code": e.code, "reason": e.reason, "message": e.message}, e.code)

    def _table(self, res: ResKey, objects: list[dict[str, Any]], params: dict[str, str]) -> dict[str, Any]:
        printer = (self._printers.get(res) or apidocs.BUILTIN_PRINTERS.get((res[0], res[2]))
                   or apidocs.DEFAULT_PRINTER)
        return apidocs.table(printer, objects, str(self.rv), params.get("includeObject", "Metadata"))

    # ---- discovery and OpenAPI -----------------------------------------------------------------

    def _served(self) -> list[apidocs.Served]:
        served = []
        for key in self.resources:
            info = self.resources[key]
            served.append(apidocs.Served(
                key.group or "", key.version or "", key.plural or "", info.kind or "",
                info.singular or (info.kind or "").lower(), bool(info.namespaced), frozenset(info.verbs),
                tuple(sorted(info.shortnames)), tuple(sorted(info.categories)), tuple(sorted(info.subresources))))
        return served

    def _group_versions(self) -> list[tuple[str, str]]:
        return sorted({(s.group, s.version) for s in self._served() if s.group not in apidocs.UNSERVED_GROUPS})

    def _openapi_v3(self, key: str) -> bytes | None:
        if key not in self._openapi_cache:
            for group, version in self._group_versions():
                gv_key = f"apis/{group}/{version}" if group else f"api/{version}"
                kinds = [k for k in self._schemas.values() if (k.group, k.version) == (group, version)]
                self._openapi_cache[gv_key] = json.dumps(apidocs.openapi_v3_document(kinds)).encode()
            self._openapi_cache[""] = json.dumps(apidocs.openapi_v3_index(
                self._group_versions(), self._openapi_cache)).encode()
        return self._openapi_cache.get(key)

    def _serve_docs(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.Response | None:
        """Discovery (/api, /apis, group versions) and OpenAPI (/openapi/v2, /openapi/v3/...), or None."""
        path = raw.path.rstrip("/")
        parts = [p for p in path.split("/") if p]
        if raw.method.upper() != "GET" or not parts:
            return None
        if parts == ["api"]:
            return self._json(apidocs.api_versions())
        if parts == ["apis"]:
            return self._json(apidocs.api_group_list(self._served(), self._crd_groups))
        if parts[0] == "api" and len(parts) == 2:
            return self._json(apidocs.api_resource_list(self._served(), "", parts[1]))
        if parts[0] == "apis" and len(parts) in (2, 3):
            served = [s for s in self._served() if s.group == parts[1] and s.group not in apidocs.UNSERVED_GROUPS]
            if not served:
                return self._json({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                                   "code": 404, "reason": "NotFound",
                                   "message": "the server could not find the requested resource"}, 404)
            if len(parts) == 2:
                return self._json(apidocs.api_group(parts[1], {s.version for s in served}))
            return self._json(apidocs.api_resource_list(served, parts[1], parts[2]))
        if parts == ["openapi", "v2"]:
            if "v2" not in self._openapi_cache:
                document = apidocs.openapi_v2_document(self._schemas.values())
                self._openapi_cache["v2"] = json.dumps(document).encode()
                self._openapi_cache["v2.pb"] = apidocs.openapi_v2_protobuf(document)
            if "protobuf" in raw.headers.get("Accept", ""):
                return aiohttp.web.Response(body=self._openapi_cache["v2.pb"], content_type="application/octet-stream")
            return aiohttp.web.Response(body=self._openapi_cache["v2"], content_type="application/json")
        if parts[:2] == ["openapi", "v3"]:
            body = self._openapi_v3("/".join(parts[2:]))
            if body is None:
                return self._json({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                                   "code": 404, "reason": "NotFound", "message": f"{raw.path} not found"}, 404)
            return aiohttp.web.Response(body=body, content_type="application/json")
        return None

    def _key_ns(self, res: ResKey, ns: str | None) -> str | None:
        """Cluster-scoped objects are stored without a namespace, whatever the URL said."""
        info = self.info(res)
        return ns if info is None or info.namespaced else None

    def _get_checked(self, res: ResKey, ns: str | None, name: str | None) -> dict[str, Any]:
        obj = self._by_res[res].get((self._key_ns(res, ns), name or ""))
        if obj is None:
            raise ApiError(404, "NotFound", f'{res[2]} "{name}" not found')
        return obj

    @staticmethod
    def _json(obj: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=json.dumps(obj).encode(), status=status, content_type="application/json")

    def _select(self, res: ResKey, ns: str | None, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        labels = parse_label_selector(params.get("labelSelector"))
        fields = parse_field_selector(params.get("fieldSelector"))
        for (ons, _), obj in self._by_res[res].items():
            if ns is not None and ons != ns:
                continue
            if labels(obj.get("metadata", {}).get("labels") or {}) and fields(obj):
                yield obj

    def _list_body(self, res: ResKey, ns: str | None, params: dict[str, str]) -> dict[str, Any]:
        info = self.info(res)
        kind = (info.kind if info and info.kind else res[2].capitalize()) + "List"
        return {"apiVersion": f"{res[0]}/{res[1]}" if res[0] else res[1], "kind": kind,
                "metadata": {"resourceVersion": str(self.rv)}, "items": list(self._select(res, ns, params))}

    async def _serve_watch_stream(self, raw: aiohttp.web.BaseRequest, res: ResKey, ns: str | None,
                                  params: dict[str, str], as_table: bool = False) -> aiohttp.web.StreamResponse:
        watcher = _Watcher(res, ns, parse_label_selector(params.get("labelSelector")),
                           parse_field_selector(params.get("fieldSelector")))
        since = params.get("resourceVersion")
        initial: list[dict[str, Any]] = []
        gone = False
        # No await between the snapshot and the subscription: nothing can slip in between.
        if since and since != "0":
            since_rv = int(since)
            history = self._history[res]
            if history and history[0][0] > since_rv + 1 and len(history) == history.maxlen:
                gone = True
            for rv, kind, ons, obj in history:
                if rv > since_rv and watcher.matches(ons, obj):
                    initial.append({"type": kind, "object": obj})
        else:
            initial = [{"type": "ADDED", "object": o} for o in self._select(res, ns, params)]
        self._watchers[res].append(watcher)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(raw)
            if gone:
                await response.write(json.dumps({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                    "reason": "Expired", "message": "too old resource version"}}).encode() + b"\n")
                return response
            columns_sent = False

            def encode(event: dict[str, Any]) -> bytes:
                """An event as JSON; for ``kubectl get -w`` its object as a one-row Table (the column
                definitions in the first event only, as the API server sends them)."""
                nonlocal columns_sent
                if as_table and event.get("type") != "ERROR":
                    table = self._table(res, [event["object"]], params)
                    if columns_sent:
                        table["columnDefinitions"] = []
                    columns_sent = True
                    event = {"type": event["type"], "object": table}
                return json.dumps(event).encode()

            for event in initial:
                await response.write(encode(event) + b"\n")
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            while True:
                wait = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), wait)
                except asyncio.TimeoutError:
                    break
                if event is None:
                    break
                chunk = [encode(event)]
                while not watcher.queue.empty():
                    more = watcher.queue.get_nowait()
                    if more is None:
                        break
                    chunk.append(encode(more))
                await response.write(b"\n".join(chunk) + b"\n")
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._watchers[res].remove(watcher)
        return response

    def close_watches(self) -> None:
        """End every open watch stream (clients reconnect with their last resourceVersion)."""
        for watchers in self._watchers.values():
            for w in watchers:
                w.queue.put_nowait(None)


@contextlib.asynccontextmanager
async def serving(crds: Iterable[dict[str, Any]] = (), port: int | None = None) -> AsyncIterator[ApiServer]:
    """Start an :class:`ApiServer` on 127.0.0.1 (a random port unless given)."""
    server = ApiServer()
    for crd in crds:
        server.add_crd(crd)
    async with server, kmock.Server(server, host="127.0.0.1", port=port):
        yield server


def kubeconfig(url: str) -> dict[str, Any]:
    """A kubeconfig for the local server (plain http, no credentials)."""
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": url}}],
        "users": [{"name": "local", "user": {"token": "local-dev-token"}}],
        # In a cluster, kopf posts Events about cluster-scoped objects (the policies) into the
        # namespace of its pod; the context namespace plays that part here.
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local",
                                                   "namespace": "nodeaudit-system"}}],
    }
