"""A fault-injecting proxy in front of the local API server, driven per test.

Why a proxy and not an option of the server: the faults are those of the network and of the API
server's front door (a 500 after etcd applied the write, a watch cut, a 410 on resume, a refused
connection, a slow answer), and they must hit only the operator: the simulator writes to the store
directly and the test's own client talks to the server past the proxy, so a test can look at the
cluster's true state while the operator sees a faulty one.

Faults, each matched by method, resource (plural), subresource, verb and User-Agent:

* ``fail(status)``: answer 5xx (or 409, 429, ...) without forwarding the request;
* ``land_then_fail(status)``: forward the request (the write is applied), then answer 5xx;
* ``gone_on_resume(resource)``: a watch that resumes from a resourceVersion gets the
  ``ERROR 410 Expired`` event a real API server sends for a compacted version: kopf re-lists;
* ``cut_watches()`` / ``cut_watches_every(a, b)``: end the open watch streams abruptly;
* ``hold_watches(resource)``: the watch is down until ``release_watches`` (new watch requests wait);
* ``refuse_for(seconds)``: the listening socket is closed (connection refused) and open
  connections are dropped, then the proxy listens again on the same port;
* ``latency``: seconds added to every answer.

Randomness (``rate`` below 1, the cut interval) comes from one ``random.Random`` seeded with
``NODEAUDIT_FAULT_SEED`` (default :data:`DEFAULT_SEED`), so a failing run can be repeated exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiohttp.web

from nodeaudit.testing.apiserver import ApiServer

DEFAULT_SEED = 15
SEED_ENV = "NODEAUDIT_FAULT_SEED"
# Headers that belong to one hop (RFC 9110 7.6.1) or that aiohttp sets itself.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
        "content-length", "proxy-connection", "content-encoding"}
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def seed_from_env() -> int:
    """``$NODEAUDIT_FAULT_SEED`` as an integer, :data:`DEFAULT_SEED` when unset."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return DEFAULT_SEED
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{SEED_ENV}={raw!r}: expected a whole number") from None


@dataclass(frozen=True)
class Call:
    """What a rule is matched against: one request as the API server would classify it."""

    method: str
    verb: str  # get list watch create update patch delete (as RBAC names them)
    resource: str | None  # plural, e.g. "nodes", "nodeauditpolicies"
    subresource: str | None
    name: str | None
    agent: str  # "kopf", "nodeaudit", ... (the User-Agent's product)
    resumes: bool  # a watch with a resourceVersion (a resume, not a fresh start)
    body: Any = None  # the parsed JSON request body, when there is one


def classify(method: str, path: str, query: dict[str, str], agent: str, body: Any = None) -> Call:
    parsed = ApiServer._parse(path)
    resource = sub = name = None
    if parsed is not None:
        (_group, _version, resource), _ns, name, sub = parsed
    watch = query.get("watch") in ("true", "1")
    if method == "GET":
        verb = "watch" if watch else ("get" if name else "list")
    else:
        verb = _VERBS.get(method, method.lower())
    rv = query.get("resourceVersion")
    return Call(method, verb, resource, sub, name, agent.split("/")[0] or "unknown",
                watch and bool(rv) and rv != "0", body)


@dataclass
class Rule:
    """One fault: applies to calls that ``matches``, ``times`` times (None: until removed), each
    time with probability ``rate``."""

    action: str  # fail | land_then_fail | gone
    status: int
    matches: Callable[[Call], bool]
    times: int | None = 1
    rate: float = 1.0
    hits: list[Call] = field(default_factory=list)

    @property
    def spent(self) -> bool:
        return self.times is not None and len(self.hits) >= self.times


def matcher(*, method: str | None = None, verb: str | None = None, resource: str | None = None,
            subresource: str | None = "", name: str | None = None, agent: str | None = None,
            body: Callable[[Any], bool] | None = None) -> Callable[[Call], bool]:
    """A predicate over calls. ``subresource=""`` (the default) matches the object itself only;
    ``None`` matches any; ``body`` looks at the request body (e.g. "a patch that adds a finalizer")."""
    def test(c: Call) -> bool:
        return ((method is None or c.method == method.upper()) and (verb is None or c.verb == verb)
                and (resource is None or c.resource == resource)
                and (subresource is None or (c.subresource or "") == subresource)
                and (name is None or c.name == name) and (agent is None or c.agent == agent)
                and (body is None or body(c.body)))
    return test


@dataclass
class _Watch:
    call: Call
    cut: asyncio.Event = field(default_factory=asyncio.Event)


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 to ``upstream``; runs in the caller's event loop.

    The fault methods may be called from any thread (they only change rules or schedule work in
    the proxy's loop): tests drive it from their own thread while kopf runs in another.
    """

    def __init__(self, upstream: str, *, seed: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.seed = seed_from_env() if seed is None else seed
        self.random = random.Random(self.seed)
        self.rules: list[Rule] = []
        self.latency = 0.0
        self.log: list[tuple[Call, int, str]] = []  # (call, status answered, fault or "")
        self.url = ""
        self.port = 0
        self._held: set[str | None] = set()
        self._released = asyncio.Event()
        self._watches: list[_Watch] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._server: aiohttp.web.Server | None = None
        self._runner: aiohttp.web.ServerRunner | None = None
        self._site: aiohttp.web.TCPSite | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- lifecycle (in the proxy's loop) ----------------------------------------------------

    async def start(self, port: int = 0) -> FaultProxy:
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        self._server = aiohttp.web.Server(self._handle)
        self._runner = aiohttp.web.ServerRunner(self._server)
        await self._runner.setup()
        await self._listen(port)
        return self

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        self._site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await self._site.start()
        sockets = self._runner.addresses
        self.port = int(sockets[-1][1]) if sockets else port
        self.url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._cut(lambda c: True)
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Any) -> None:
        def go() -> None:
            task = asyncio.ensure_future(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._in_loop(go)

    def _in_loop(self, fn: Callable[[], Any]) -> None:
        assert self._loop is not None, "the proxy is not started"
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    # ---- faults -------------------------------------------------------------------------------

    def fail(self, status: int = 500, *, times: int | None = 1, rate: float = 1.0, **match: Any) -> Rule:
        """Answer ``status`` without forwarding (``match``: see :func:`matcher`)."""
        return self._add(Rule("fail", status, matcher(**match), times, rate))

    def land_then_fail(self, status: int = 500, *, times: int | None = 1, rate: float = 1.0,
                       **match: Any) -> Rule:
        """Forward the request (the API applies it), then answer ``status`` instead of its answer."""
        return self._add(Rule("land_then_fail", status, matcher(**match), times, rate))

    def gone_on_resume(self, resource: str | None = None, *, times: int | None = 1,
                       rate: float = 1.0) -> Rule:
        """A watch resuming from a resourceVersion gets ``ERROR 410 Expired`` (kopf re-lists)."""
        base = matcher(resource=resource, verb="watch")
        return self._add(Rule("gone", 410, lambda c: base(c) and c.resumes, times, rate))

    def _add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        with contextlib.suppress(ValueError):
            self.rules.remove(rule)

    def clear(self) -> None:
        """No faults any more (rules, held watches, latency)."""
        self.rules.clear()
        self.latency = 0.0
        self.release_watches()

    def cut_watches(self, resource: str | None = None) -> None:
        """End the open watch streams (of ``resource``, or all) abruptly, as a network cut does."""
        self._in_loop(lambda: self._cut(lambda c: resource is None or c.resource == resource))

    def cut_watches_every(self, low: float, high: float, resource: str | None = None) -> None:
        """Cut the watch streams every ``low``..``high`` seconds (seeded), until :meth:`stop`."""
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.random.uniform(low, high))
                self._cut(lambda c: resource is None or c.resource == resource)
        self._spawn(loop())

    def hold_watches(self, resource: str | None = None) -> None:
        """Take the watch of ``resource`` (or every watch) down: cut it, and hold new watch
        requests unanswered until :meth:`release_watches`."""
        def go() -> None:
            self._held.add(resource)
            self._released.clear()
            self._cut(lambda c: resource is None or c.resource == resource)
        self._in_loop(go)

    def release_watches(self) -> None:
        def go() -> None:
            self._held.clear()
            self._released.set()
        self._in_loop(go)

    def refuse_for(self, seconds: float) -> None:
        """Refuse connections for ``seconds``: stop listening, drop every open connection, then
        listen again on the same port."""
        async def go() -> None:
            assert self._site is not None and self._server is not None
            await self._site.stop()
            self._cut(lambda c: True)
            for handler in self._server.connections:
                handler.force_close()
            await asyncio.sleep(seconds)
            await self._listen(self.port)
        self._spawn(go())

    def calls(self, fault: str | None = None) -> list[Call]:
        """The calls answered with ``fault`` ("fail", "land_then_fail", "gone"), or all."""
        return [c for c, _, f in self.log if fault is None or f == fault]

    # ---- serving --------------------------------------------------------------------------

    def _cut(self, which: Callable[[Call], bool]) -> None:
        for w in list(self._watches):
            if which(w.call):
                w.cut.set()

    def _pick(self, call: Call) -> Rule | None:
        for rule in self.rules:
            if rule.spent or not rule.matches(call):
                continue
            if rule.rate < 1.0 and self.random.random() >= rule.rate:
                continue
            rule.hits.append(call)
            return rule
        return None

    async def _handle(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        data = await request.read() if request.can_read_body else b""
        try:
            body = json.loads(data) if data else None
        except ValueError:
            body = None
        query = dict(request.query)
        call = classify(request.method.upper(), request.path, query,
                        str(request.headers.get("User-Agent", "")), body)
        if self.latency:
            await asyncio.sleep(self.latency)
        if call.verb == "watch":
            while call.resource in self._held or None in self._held:
                await self._released.wait()
        rule = self._pick(call)
        if rule is not None and rule.action == "fail":
            self.log.append((call, rule.status, "fail"))
            return _status(rule.status, "injected fault: the API server did not handle the request")
        if rule is not None and rule.action == "gone":
            self.log.append((call, 200, "gone"))
            event = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                                 "status": "Failure", "code": 410, "reason": "Expired",
                                                 "message": "too old resource version (injected)"}}
            return aiohttp.web.Response(body=json.dumps(event).encode() + b"\n", status=200,
                                        content_type="application/json")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        upstream = self._session.request(request.method, self.upstream + request.rel_url.path_qs,
                                         data=data or None, headers=headers)
        if call.verb == "watch":
            return await self._stream(request, call, upstream)
        try:
            async with upstream as rsp:
                payload = await rsp.read()
                status = rsp.status
                ctype = rsp.headers.get("Content-Type", "application/json")
        except aiohttp.ClientError as e:
            self.log.append((call, 502, "upstream"))
            return _status(502, f"the proxy could not reach the API server: {e}")
        if rule is not None and rule.action == "land_then_fail":
            self.log.append((call, rule.status, "land_then_fail"))
            return _status(rule.status, "injected fault: the write was applied, the answer was lost "
                                        "(etcd request timed out)")
        self.log.append((call, status, ""))
        return aiohttp.web.Response(body=payload, status=status, headers={"Content-Type": ctype})

    async def _stream(self, request: aiohttp.web.BaseRequest, call: Call,
                      upstream: Any) -> aiohttp.web.StreamResponse:
        watch = _Watch(call)
        self._watches.append(watch)
        out = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            async with upstream as rsp:
                out.set_status(rsp.status)
                await out.prepare(request)
                self.log.append((call, rsp.status, ""))
                cut = asyncio.ensure_future(watch.cut.wait())
                try:
                    while True:
                        read = asyncio.ensure_future(rsp.content.readany())
                        done, _ = await asyncio.wait({read, cut}, return_when=asyncio.FIRST_COMPLETED)
                        if cut in done:
                            read.cancel()
                            # Abruptly, as a network cut: no final chunk, the connection is reset.
                            if request.transport is not None:
                                request.transport.abort()
                            return out
                        chunk = read.result()
                        if not chunk:
                            break
                        await out.write(chunk)
                finally:
                    cut.cancel()
            with contextlib.suppress(ConnectionError):
                await out.write_eof()
        except (aiohttp.ClientError, ConnectionError, asyncio.CancelledError):
            if request.transport is not None:
                request.transport.abort()
        finally:
            with contextlib.suppress(ValueError):
                self._watches.remove(watch)
        return out


def _status(code: int, message: str) -> aiohttp.web.Response:
    reason = {409: "Conflict", 410: "Expired", 429: "TooManyRequests", 500: "InternalError",
              503: "ServiceUnavailable", 504: "Timeout"}.get(code, "InternalError")
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code,
            "reason": reason, "message": message}
    return aiohttp.web.Response(body=json.dumps(body).encode(), status=code, content_type="application/json")


def adds_finalizer(body: Any) -> bool:
    """A JSON patch (what kopf sends) that adds a finalizer."""
    return isinstance(body, list) and any(
        isinstance(op, dict) and str(op.get("path", "")).startswith("/metadata/finalizers")
        and op.get("op") in ("add", "replace") for op in body)

