"""The Azure edge: ask ARM (and the cluster) whether each scale set runs a monitoring agent.

Everything that talks to ARM is here, through the real async Azure SDK clients
(``azure.mgmt.compute.aio``, ``azure.mgmt.monitor.aio``, ``azure.mgmt.loganalytics.aio``); the
verdicts themselves are pure (``nodeaudit.core.agent``).

- Endpoint: ``NODEAUDIT_ARM_ENDPOINT`` (default https://management.azure.com), passed to every
  client as ``base_url`` with credential scope ``<endpoint>/.default``.
- Credential: ``NODEAUDIT_ARM_TOKEN_FILE`` (a bearer token in a file, re-read when the file changes)
  or ``azure.identity.aio.DefaultAzureCredential`` (workload identity in the cluster).
- Politeness: one list call per scale set per interval (``AgentChecker`` caches verdicts with a
  TTL; a scale set not seen before is checked at once), at most ``concurrency`` calls in flight,
  azure-core's retry policy (Retry-After honoured on 429/503, exponential backoff on 5xx, bounded
  count), a Retry-After longer than ``max_retry_after`` is not waited out but reported, and every
  scale set has a hard deadline.
- No token, key or secret is ever logged or put into a verdict.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from azure.core.credentials import AccessToken
from azure.core.exceptions import (
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import AsyncRetryPolicy, SansIOHTTPPolicy

from nodeaudit.core import agent as A
from nodeaudit.core.policy import NodeAuditPolicySpec, parse_duration

log = logging.getLogger("nodeaudit.azure.check")

ENV_ENDPOINT = "NODEAUDIT_ARM_ENDPOINT"
ENV_TOKEN_FILE = "NODEAUDIT_ARM_TOKEN_FILE"
DEFAULT_ENDPOINT = "https://management.azure.com"

AMA_PUBLISHER = "Microsoft.Azure.Monitor"
OMS_PUBLISHER = "Microsoft.EnterpriseCloud.Monitoring"
EXTENSION_SPECS: dict[str, dict[str, Any]] = {
    A.AMA: {"publisher": AMA_PUBLISHER, "typeHandlerVersion": "1.0", "enableAutomaticUpgrade": True},
    A.OMS: {"publisher": OMS_PUBLISHER, "typeHandlerVersion": "1.13"},
}
DCR_ASSOCIATION_NAME = "nodeaudit-syslog"


# -- endpoint and credential -----------------------------------------------------------------------


def arm_endpoint(env: Mapping[str, str] | None = None) -> str:
    """``NODEAUDIT_ARM_ENDPOINT`` of ``env`` (default os.environ), checked: https only, no trailing /."""
    env = os.environ if env is None else env
    ep = (env.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT).strip().rstrip("/")
    if not ep.startswith("https://"):
        # azure-core refuses bearer tokens over plain http; say so now rather than per request
        raise ValueError(f"{ENV_ENDPOINT} must be an https:// URL, got {ep!r}")
    return ep


class TokenFileCredential:
    """An async TokenCredential that serves the bearer token held in a file.

    The file is re-read whenever its mtime/size/inode change (a projected or rotated token). The
    token handed to azure-core carries a short ``expires_on`` so the bearer policy asks again on
    every request: asking costs one ``stat``; the file itself is read only when it changed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token: str = ""
        self.reads = 0

    def _current(self) -> str:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._stamp:
                with open(self.path, encoding="utf-8") as f:
                    token = f.read().strip()
                self.reads += 1
                if token.lower().startswith("bearer "):
                    token = token[7:].strip()
                self._token, self._stamp = token, stamp
        except OSError as e:  # missing, a directory, no permission...
            raise ClientAuthenticationError(
                f"cannot read the ARM token file {self.path}: {e.strerror or type(e).__name__}") from None
        except UnicodeDecodeError:
            raise ClientAuthenticationError(f"cannot read the ARM token file {self.path}: not UTF-8 text") from None
        if not self._token:
            raise ClientAuthenticationError(f"the ARM token file {self.path} is empty")
        return self._token

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._current(), int(time.time()) + 1)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> TokenFileCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __repr__(self) -> str:  # never the token
        return f"TokenFileCredential(path={self.path!r})"


def make_credential(env: Mapping[str, str] | None = None) -> Any:
    """``NODEAUDIT_ARM_TOKEN_FILE`` -> TokenFileCredential, else DefaultAzureCredential (aio)."""
    env = os.environ if env is None else env
    path = env.get(ENV_TOKEN_FILE)
    if path:
        return TokenFileCredential(path)
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


# -- clients ---------------------------------------------------------------------------------------


class BoundedRetryPolicy(AsyncRetryPolicy):  # type: ignore[type-arg]
    """azure-core's retry policy as configured, except that a Retry-After longer than
    ``max_retry_after`` is not slept through: the response (429/503) is returned and reported."""

    def __init__(self, *, max_retry_after: float = 120.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_retry_after = max_retry_after

    def is_retry(self, settings: dict[str, Any], response: Any) -> bool:
        retry_after = self.get_retry_after(response)
        if retry_after is not None and retry_after > self.max_retry_after:
            return False
        return bool(super().is_retry(settings, response))


class _CountingPolicy(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Counts every HTTP attempt (it sits after the retry policy) by method and operation."""

    def __init__(self, counter: Counter[str], observe: Callable[[str, int | None], None] | None = None) -> None:
        self.counter = counter
        self.observe = observe

    def on_request(self, request: Any) -> None:
        req = request.http_request
        path = req.url.split("?", 1)[0]
        self.counter[f"{req.method} {_operation_of(path)}"] += 1

    # ``observe(operation, status or None)``: the operator's Prometheus counter (nodeaudit.controller.metrics).
    def on_response(self, request: Any, response: Any) -> None:
        if self.observe is not None:
            self.observe(_metric_operation(request.http_request), response.http_response.status_code)

    def on_exception(self, request: Any) -> None:
        if self.observe is not None:
            self.observe(_metric_operation(request.http_request), None)


def _metric_operation(req: Any) -> str:
    return f"{_operation_of(req.url.split('?', 1)[0])}.{str(req.method).lower()}"


def _operation_of(path: str) -> str:
    p = path.lower()
    for marker, name in (
        ("/extensions", "vmss.extensions"),
        ("/manualupgrade", "vmss.manualupgrade"),
        ("/datacollectionruleassociations/", "dcr.association"),
        ("/datacollectionrules/", "dcr"),
        ("/datasources", "workspace.datasources"),
    ):
        if marker in p:
            return name
    return "other"


@dataclass
class ArmOptions:
    """Transport, retry and concurrency settings (tests shorten them; production keeps defaults)."""

    connection_verify: bool | str = True  # a CA bundle path for private endpoints / tests
    connection_timeout: float = 10.0
    read_timeout: float = 30.0
    retry_total: int = 4
    retry_backoff_factor: float = 0.8
    retry_backoff_max: float = 30.0
    max_retry_after: float = 120.0
    deadline: float = 300.0  # hard bound for one scale set (all pages, all retries)
    concurrency: int = 8
    polling_interval: float = 15.0  # LRO polling when ARM sends no Retry-After


class ArmClients:
    """Makes (and keeps) the async ARM clients, one per subscription and service."""

    def __init__(
        self,
        credential: Any | None = None,
        *,
        endpoint: str | None = None,
        options: ArmOptions | None = None,
        env: Mapping[str, str] | None = None,
        observe: Callable[[str, int | None], None] | None = None,
    ) -> None:
        """``observe(operation, status)`` is called after every HTTP attempt (status None: no response)."""
        self.observe = observe
        self.endpoint = arm_endpoint({ENV_ENDPOINT: endpoint} if endpoint else env)
        self.credential = credential if credential is not None else make_credential(env)
        self.options = options or ArmOptions()
        self.requests: Counter[str] = Counter()
        self._clients: dict[tuple[str, str], Any] = {}
        self._loop: object = None

    @property
    def request_total(self) -> int:
        return sum(self.requests.values())

    def _kwargs(self) -> dict[str, Any]:
        o = self.options
        return {
            "base_url": self.endpoint,
            "credential_scopes": [f"{self.endpoint}/.default"],
            "retry_policy": BoundedRetryPolicy(
                max_retry_after=o.max_retry_after,
                retry_total=o.retry_total,
                retry_backoff_factor=o.retry_backoff_factor,
                retry_backoff_max=o.retry_backoff_max,
            ),
            "per_retry_policies": [_CountingPolicy(self.requests, self.observe)],
            "connection_verify": o.connection_verify,
            "connection_timeout": o.connection_timeout,
            "read_timeout": o.read_timeout,
        }

    def _get(self, kind: str, subscription: str) -> Any:
        try:
            loop: object = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self._loop:
            # aiohttp sessions belong to the loop that made them: a new loop (a second
            # asyncio.run) gets new clients; the old ones died with their loop.
            self._clients, self._loop = {}, loop
        key = (kind, subscription.lower())
        client = self._clients.get(key)
        if client is None:
            if kind == "compute":
                from azure.mgmt.compute.aio import ComputeManagementClient as cls
            elif kind == "monitor":
                from azure.mgmt.monitor.aio import MonitorManagementClient as cls  # type: ignore[assignment]
            else:
                from azure.mgmt.loganalytics.aio import LogAnalyticsManagementClient as cls  # type: ignore[assignment]
            client = cls(self.credential, subscription, **self._kwargs())
            self._clients[key] = client
        return client

    def compute(self, subscription: str) -> Any:
        return self._get("compute", subscription)

    def monitor(self, subscription: str) -> Any:
        return self._get("monitor", subscription)

    def loganalytics(self, subscription: str) -> Any:
        return self._get("loganalytics", subscription)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
        close = getattr(self.credential, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()

    async def __aenter__(self) -> ArmClients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- SDK objects -> facts ---------------------------------------------------------------------------


def _s(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def extension_fact(ext: Any) -> A.ExtensionFact:
    """One SDK extension object -> ExtensionFact, for azure-mgmt-compute 37.x and >= 38.

    >= 38 (TypeSpec models): ``ext.properties.type`` is the extension type and ``ext.type`` the ARM
    resource type. 37.x (msrest models): ``ext.type_properties_type``. Odd payloads give Nones.
    """
    try:
        props = getattr(ext, "properties", None)
        if props is not None and not isinstance(props, (str, int, float, list)):
            src: Any = props
            typ = getattr(props, "type", None)
        else:
            src = ext
            typ = getattr(ext, "type_properties_type", None)
        return A.ExtensionFact(
            name=_s(getattr(ext, "name", None)),
            type=_s(typ),
            publisher=_s(getattr(src, "publisher", None)),
            provisioning_state=_s(getattr(src, "provisioning_state", None)),
            type_handler_version=_s(getattr(src, "type_handler_version", None)),
        )
    except Exception:  # noqa: BLE001 - a payload the model cannot read: not an agent, not a crash
        return A.ExtensionFact(name=None, type=None, publisher=None, provisioning_state=None)


def _strs(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, Iterable):
        return tuple(str(x) for x in v if isinstance(x, str))
    return ()


def dcr_facts(dcr: Any) -> tuple[list[A.SyslogSource], list[str]]:
    """A DataCollectionRuleResource -> its syslog sources and the streams its dataFlows carry."""
    sources: list[A.SyslogSource] = []
    ds = getattr(dcr, "data_sources", None)
    for s in getattr(ds, "syslog", None) or []:
        sources.append(A.SyslogSource(
            name=_s(getattr(s, "name", None)),
            facilities=_strs(getattr(s, "facility_names", None)),
            levels=_strs(getattr(s, "log_levels", None)),
            streams=_strs(getattr(s, "streams", None)),
        ))
    flows: list[str] = []
    for f in getattr(dcr, "data_flows", None) or []:
        if getattr(f, "destinations", None):
            flows.extend(_strs(getattr(f, "streams", None)))
    return sources, flows


def workspace_source_fact(ds: Any) -> A.SyslogSource | None:
    """A workspace DataSource of kind LinuxSyslog -> SyslogSource (None for other kinds)."""
    kind = _s(getattr(ds, "kind", None))
    if not kind or kind.lower() != "linuxsyslog":
        return None
    props = getattr(ds, "properties", None)
    if not isinstance(props, Mapping):
        with contextlib.suppress(Exception):
            props = dict(props) if props is not None else None
    if not isinstance(props, Mapping):
        return A.SyslogSource(name=_s(getattr(ds, "name", None)), facilities=(), levels=())
    sev = props.get("syslogSeverities") or []
    levels = tuple(s.get("severity") for s in sev if isinstance(s, Mapping) and isinstance(s.get("severity"), str))
    return A.SyslogSource(
        name=_s(getattr(ds, "name", None)),
        facilities=_strs(props.get("syslogName")),
        levels=levels,  # type: ignore[arg-type]
    )


def parse_arm_id(resource_id: str, provider_type: str) -> tuple[str, str, str]:
    """``/subscriptions/S/resourceGroups/G/providers/<provider_type>/N`` -> (S, G, N)."""
    parts = [p for p in resource_id.strip().split("/") if p]
    low = [p.lower() for p in parts]
    try:
        sub = parts[low.index("subscriptions") + 1]
        rg = parts[low.index("resourcegroups") + 1]
        i = low.index("providers")
    except (ValueError, IndexError):
        raise ValueError(f"not an ARM resource id: {resource_id!r}") from None
    want = [p.lower() for p in provider_type.split("/")]
    if low[i + 1 : i + 1 + len(want)] != want or len(parts) != i + 2 + len(want):
        raise ValueError(f"not a {provider_type} resource id: {resource_id!r}")
    return sub, rg, parts[-1]


# -- errors -> verdict messages ---------------------------------------------------------------------


def _arm_code(e: HttpResponseError) -> str:
    err = getattr(e, "error", None)
    code = getattr(err, "code", None)
    return f" ({code})" if isinstance(code, str) and code else ""


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


#: What to configure when the credential chain yields no token: one sentence, never the chain's dump.
NO_CREDENTIAL = (f"no Azure credential: give the operator a workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, "
                 f"AZURE_FEDERATED_TOKEN_FILE) or set {ENV_TOKEN_FILE}")


def credential_message(e: BaseException) -> str:
    """One line for a credential that gave no token. DefaultAzureCredential's message lists every
    credential it tried, one paragraph each (kilobytes): it becomes NO_CREDENTIAL. The token-file
    credential's own line (which file, what is wrong with it) is kept."""
    raw = str(getattr(e, "message", None) or e).strip()
    unavailable = any(c.__name__ == "CredentialUnavailableError" for c in type(e).__mro__)
    if unavailable or "DefaultAzureCredential" in raw or "\n" in raw:
        return NO_CREDENTIAL
    return " ".join(raw.split())[:200] or type(e).__name__


def describe_error(
    e: BaseException, *, what: str, permission: str, scope: str, endpoint: str = "", retry_note: str = ""
) -> str:
    """A one-line verdict message for a failed ARM call. Never includes a token.

    ``retry_note`` is appended to the transient failures (timeouts, throttling, 5xx, network): the
    operator passes "; retried next interval", the one-shot CLI nothing.
    """
    at = f" ({endpoint})" if endpoint else ""
    if isinstance(e, asyncio.TimeoutError):
        return f"{what}: no answer within the deadline (ARM slow or unreachable{at}){retry_note}"
    if isinstance(e, DecodeError | DeserializationError):
        return f"{what}: ARM sent a malformed response (not the expected JSON){retry_note}"
    if isinstance(e, ClientAuthenticationError) and getattr(e, "status_code", None) is None:
        # raised by the credential itself, before any request
        message = credential_message(e)
        return f"{what}: {message}" if message == NO_CREDENTIAL else f"{what}: cannot get a token: {message}"
    if isinstance(e, ClientAuthenticationError) and e.status_code == 401:
        return f"{what}: ARM rejected the credential (401): check workload identity / {ENV_TOKEN_FILE}"
    if isinstance(e, HttpResponseError):
        status = e.status_code
        if status == 403:
            return (f"{what}: 403 Forbidden{_arm_code(e)}: the operator's identity lacks {permission} on "
                    f"{scope}; {A.READER_ROLE_HINT}" if permission == A.EXTENSIONS_READ_PERMISSION else
                    f"{what}: 403 Forbidden{_arm_code(e)}: the operator's identity lacks {permission} on {scope}")
        if status == 404 or isinstance(e, ResourceNotFoundError):
            return f"{what}: not found (404){_arm_code(e)}: {scope}"
        if status == 429:
            resp: Any = e.response
            ra = resp.headers.get("Retry-After") if resp is not None else None
            return f"{what}: throttled by ARM (429{', Retry-After ' + ra + ' s' if ra else ''}){retry_note}"
        if status is not None and status >= 500:
            return f"{what}: ARM server error {status}{_arm_code(e)} after retries{retry_note}"
        return f"{what}: ARM answered {status}{_arm_code(e)}"
    if isinstance(e, ServiceResponseError | ServiceRequestError):
        return f"{what}: ARM unreachable or too slow{at}: {type(e).__name__}: {_first_line(e)}{retry_note}"
    return f"{what}: unexpected {type(e).__name__}: {_first_line(e)}{at}"


# -- the checker ------------------------------------------------------------------------------------


@dataclass
class _Cached:
    at: float
    verdict: A.AgentVerdict
    extensions: tuple[str, ...]
    checked_at: datetime


@dataclass
class AgentChecker:
    """Keeps clients and the per-scale-set verdict cache across intervals.

    ``ttl`` (seconds) should be a little below the check interval (``ttl_for_interval``) so each
    interval refreshes every scale set exactly once; a scale set not in the cache (new node pool)
    is checked at once; scale sets that disappeared are dropped; errors are never cached.
    """

    clients: ArmClients
    ttl: float = 3600.0 * 0.9
    retry_note: str = ""  # appended to transient failures (the operator: "; retried next interval")
    clock: Callable[[], float] = time.monotonic
    _cache: dict[tuple[str, ...], _Cached] = field(default_factory=dict)

    def invalidate(self, ref: A.ScaleSetRef | None = None) -> None:
        """Forget one scale set's verdict (after remediation), or every verdict."""
        if ref is None:
            self._cache.clear()
            return
        for key in [k for k in self._cache if tuple(k[1:4]) == ref.key]:
            del self._cache[key]

    async def _bounded(self, coro: Any, sem: asyncio.Semaphore | None = None) -> Any:
        """``coro`` within the deadline (and, given ``sem``, within the concurrency bound)."""
        if sem is None:
            return await asyncio.wait_for(coro, self.clients.options.deadline)
        async with sem:
            return await asyncio.wait_for(coro, self.clients.options.deadline)

    def _describe(self, e: BaseException, *, what: str, permission: str, scope: str) -> str:
        return describe_error(e, what=what, permission=permission, scope=scope,
                              endpoint=self.clients.endpoint, retry_note=self.retry_note)

    async def _list_extensions(self, ref: A.ScaleSetRef) -> list[A.ExtensionFact]:
        client = self.clients.compute(ref.subscription)
        pager = client.virtual_machine_scale_set_extensions.list(ref.resource_group, ref.name)
        return [extension_fact(e) async for e in pager]

    async def _check_one(
        self, sem: asyncio.Semaphore, ref: A.ScaleSetRef, nodes: list[str], extension_types: Sequence[str]
    ) -> A.ScaleSetResult:
        key = ("ext", *ref.key, ",".join(sorted(t.lower() for t in extension_types)))
        hit = self._cache.get(key)
        if hit is not None and self.clock() - hit.at < self.ttl:
            return A.ScaleSetResult.from_verdict(ref, nodes, hit.verdict, extensions=hit.extensions,
                                                 checked_at=hit.checked_at, cached=True)
        now = datetime.now(timezone.utc)
        try:
            facts = await self._bounded(self._list_extensions(ref), sem)
        except Exception as e:  # noqa: BLE001 - every failure is a verdict, never a crash
            msg = self._describe(e, what="listing extensions", permission=A.EXTENSIONS_READ_PERMISSION,
                                 scope=f"scale set {ref.resource_id}")
            # info, not warning: the verdict carries the message (the operator logs the condition,
            # the CLI prints the table); a warning would repeat each line on stderr
            log.info("agent check of %s failed: %s", ref.label, msg)
            return A.ScaleSetResult(ref=ref, nodes=nodes, state="Error", agent=None, message=msg, checked_at=now)
        verdict = A.extension_verdict(facts, extension_types)
        exts = tuple(f"{f.type or '?'}:{f.provisioning_state or '?'}" for f in facts)
        self._cache[key] = _Cached(self.clock(), verdict, exts, now)
        return A.ScaleSetResult.from_verdict(ref, nodes, verdict, extensions=exts, checked_at=now)

    async def check_extensions(
        self, groups: Mapping[A.ScaleSetRef, list[str]], extension_types: Sequence[str]
    ) -> list[A.ScaleSetResult]:
        live = {ref.key for ref in groups}
        for key in [k for k in self._cache if k[0] == "ext" and tuple(k[1:4]) not in live]:
            del self._cache[key]
        sem = asyncio.Semaphore(max(1, self.clients.options.concurrency))
        return list(await asyncio.gather(*(
            self._check_one(sem, ref, nodes, extension_types) for ref, nodes in groups.items()
        )))

    async def check_dcr(self, resource_id: str, facility: str, priority: str) -> A.CollectionResult:
        try:
            sub, rg, name = parse_arm_id(resource_id, "Microsoft.Insights/dataCollectionRules")
        except ValueError as e:
            return A.collection_error("DataCollectionRule", resource_id, str(e))
        try:
            dcr = await self._bounded(self.clients.monitor(sub).data_collection_rules.get(rg, name))
            sources, flows = dcr_facts(dcr)
            return A.dcr_collection_verdict(resource_id, sources, flows, facility, priority)
        except Exception as e:  # noqa: BLE001 - any failure is this rule's verdict
            return A.collection_error("DataCollectionRule", resource_id, self._describe(
                e, what="reading the Data Collection Rule",
                permission="Microsoft.Insights/dataCollectionRules/read", scope=resource_id))

    async def _workspace_sources(self, sub: str, rg: str, name: str) -> list[A.SyslogSource]:
        pager = self.clients.loganalytics(sub).data_sources.list_by_workspace(rg, name, filter="kind='LinuxSyslog'")
        out = []
        async for ds in pager:
            fact = workspace_source_fact(ds)
            if fact is not None:
                out.append(fact)
        return out

    async def check_workspace(self, resource_id: str, facility: str, priority: str) -> A.CollectionResult:
        try:
            sub, rg, name = parse_arm_id(resource_id, "Microsoft.OperationalInsights/workspaces")
        except ValueError as e:
            return A.collection_error("Workspace", resource_id, str(e))
        try:
            sources = await self._bounded(self._workspace_sources(sub, rg, name))
            return A.workspace_collection_verdict(resource_id, sources, facility, priority)
        except Exception as e:  # noqa: BLE001 - any failure is this workspace's verdict
            return A.collection_error("Workspace", resource_id, self._describe(
                e, what="listing the workspace's data sources",
                permission="Microsoft.OperationalInsights/workspaces/dataSources/read", scope=resource_id))

    async def remediate(
        self,
        ref: A.ScaleSetRef,
        extension: str,
        *,
        workspace: tuple[str, str] | None = None,
        data_collection_rule_id: str | None = None,
    ) -> str:
        """Install the agent extension on the scale set, then upgrade every instance. Returns a
        message (success or why not); never raises; never logs the workspace key."""
        if extension not in EXTENSION_SPECS:
            return f"remediation: unknown extension {extension!r}"
        spec = EXTENSION_SPECS[extension]
        props: dict[str, Any] = {
            "publisher": spec["publisher"],
            "type": extension,
            "typeHandlerVersion": spec["typeHandlerVersion"],
            "autoUpgradeMinorVersion": True,
        }
        if spec.get("enableAutomaticUpgrade"):
            props["enableAutomaticUpgrade"] = True
        if extension == A.OMS:
            if workspace is None:
                return "remediation: OmsAgentForLinux needs the workspace id and key (workspaceSecretRef)"
            props["settings"] = {"workspaceId": workspace[0]}
            props["protectedSettings"] = {"workspaceKey": workspace[1]}
        o = self.clients.options
        client = self.clients.compute(ref.subscription)
        vm_contributor = "(Virtual Machine Contributor on the node resource group)"
        step = "installing " + extension
        perm = f"Microsoft.Compute/virtualMachineScaleSets/extensions/write {vm_contributor}"
        try:
            async def run() -> None:
                nonlocal step, perm
                poller = await client.virtual_machine_scale_set_extensions.begin_create_or_update(
                    ref.resource_group, ref.name, extension, {"properties": props},
                    polling_interval=o.polling_interval)
                await poller.result()
                if extension == A.AMA and data_collection_rule_id:
                    step = "associating the Data Collection Rule"
                    perm = ("Microsoft.Insights/dataCollectionRuleAssociations/write (Monitoring Contributor "
                            "on the scale set)")
                    sub = ref.subscription
                    await self.clients.monitor(sub).data_collection_rule_associations.create(
                        ref.resource_id, DCR_ASSOCIATION_NAME,
                        {"properties": {"dataCollectionRuleId": data_collection_rule_id}})
                step = "upgrading the instances"
                perm = f"Microsoft.Compute/virtualMachineScaleSets/manualUpgrade/action {vm_contributor}"
                poller2 = await client.virtual_machine_scale_sets.begin_update_instances(
                    ref.resource_group, ref.name, {"instanceIds": ["*"]}, polling_interval=o.polling_interval)
                await poller2.result()

            await asyncio.wait_for(run(), o.deadline)
        except Exception as e:  # noqa: BLE001 - any failure is the remediation's result
            return "remediation failed: " + self._describe(e, what=step, permission=perm, scope=ref.resource_id)
        finally:
            self.invalidate(ref)
        log.info("installed %s on %s and upgraded its instances", extension, ref.label)
        return f"installed {extension} ({spec['publisher']}) and upgraded all instances"


def ttl_for_interval(interval_seconds: float) -> float:
    """The cache TTL for a check interval: a little below it, so each interval refreshes once."""
    return max(1.0, interval_seconds * 0.9)


# -- Container Insights (kubernetes client) ---------------------------------------------------------


def fetch_ama_logs(api_client: Any, namespace: str = "kube-system", name: str = "ama-logs") -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The ama-logs DaemonSet and its pods as plain dicts (None when the DaemonSet is absent)."""
    from kubernetes import client as k

    apps, core = k.AppsV1Api(api_client), k.CoreV1Api(api_client)
    try:
        ds = apps.read_namespaced_daemon_set(name, namespace)
    except k.ApiException as e:
        if e.status == 404:
            return None, []
        raise
    ds_dict = api_client.sanitize_for_serialization(ds)
    match = (ds_dict.get("spec", {}).get("selector", {}) or {}).get("matchLabels") or {}
    selector = ",".join(f"{k_}={v}" for k_, v in sorted(match.items()))
    pods = core.list_namespaced_pod(namespace, label_selector=selector)
    return ds_dict, [api_client.sanitize_for_serialization(p) for p in pods.items]


def list_nodes(api_client: Any) -> list[dict[str, Any]]:
    from kubernetes import client as k

    nodes = k.CoreV1Api(api_client).list_node()
    return [api_client.sanitize_for_serialization(n) for n in nodes.items]


def read_workspace_secret(api_client: Any, name: str, namespace: str, id_key: str, key_key: str) -> tuple[str, str]:
    """(workspaceId, workspaceKey) from a Secret. The values are returned, never logged."""
    from kubernetes import client as k

    secret = k.CoreV1Api(api_client).read_namespaced_secret(name, namespace)
    data = secret.data or {}
    missing = [k_ for k_ in (id_key, key_key) if k_ not in data]
    if missing:
        raise KeyError(f"Secret {namespace}/{name} has no key(s) {', '.join(missing)}")
    return (base64.b64decode(data[id_key]).decode().strip(), base64.b64decode(data[key_key]).decode().strip())


# -- the operator's entry point ---------------------------------------------------------------------


@dataclass
class AgentSettings:
    """``spec.monitoringAgent`` + ``spec.syslog`` as plain values (see ``settings_from_spec``)."""

    check: str = "VMSSExtension"
    extension_types: tuple[str, ...] = A.DEFAULT_EXTENSION_TYPES
    data_collection_rule_id: str | None = None
    workspace_resource_id: str | None = None
    interval_seconds: float = 3600.0
    remediate: bool = False
    remediation_extension: str = A.AMA
    workspace_secret: tuple[str, str, str, str] | None = None  # name, namespace, id key, key key
    facility: str = "LOG_AUTHPRIV"
    priority: str = "LOG_INFO"


def settings_from_spec(spec: NodeAuditPolicySpec) -> AgentSettings:
    """The policy model's ``spec.monitoringAgent`` + ``spec.syslog`` -> AgentSettings (the model
    holds the defaults)."""
    ma, syslog = spec.monitoring_agent, spec.syslog
    rem = ma.remediation
    ref = rem.workspace_secret_ref if rem is not None else None
    return AgentSettings(
        check=ma.check,
        extension_types=tuple(ma.extension_types),
        data_collection_rule_id=ma.data_collection_rule_id,
        workspace_resource_id=ma.workspace_resource_id,
        interval_seconds=parse_duration(ma.interval).total_seconds(),
        remediate=ma.remediate,
        remediation_extension=rem.extension if rem is not None else A.AMA,
        workspace_secret=(ref.name, ref.namespace, ref.workspace_id_key, ref.workspace_key_key) if ref else None,
        facility=str(syslog.facility),
        priority=str(syslog.priority),
    )


async def check_policy_agents(
    nodes: Sequence[Mapping[str, Any]],
    settings: AgentSettings,
    checker: AgentChecker,
    *,
    kube_api_client: Any | None = None,
) -> A.AgentReport:
    """One check of a policy's nodes: what the operator calls every ``monitoringAgent.interval``.

    ``nodes`` are Node objects as dicts (the policy's matched Linux nodes). Never raises for ARM or
    cluster trouble: it lands in the report (``state: Error`` / ``report.errors``).
    """
    report = A.AgentReport(check=settings.check)
    before = checker.clients.request_total
    groups = A.group_nodes(nodes)
    report.not_checkable = dict(groups.not_checkable)
    try:
        A.facility_name(settings.facility)
        A.severity_name(settings.priority)
    except ValueError as e:
        report.errors.append(str(e))
        return report
    if settings.check == "None":
        report.scale_sets = [
            A.ScaleSetResult(ref=r, nodes=n, state="Skipped", agent=None, message="monitoringAgent.check is None")
            for r, n in groups.scale_sets.items()
        ]
        return report
    if settings.check == "VMSSExtension":
        report.scale_sets = await checker.check_extensions(groups.scale_sets, settings.extension_types)
    elif settings.check == "ContainerInsights":
        report.scale_sets = await _check_container_insights(groups, nodes, kube_api_client)
    else:
        report.errors.append(f"unknown monitoringAgent.check {settings.check!r}")
        return report

    if settings.data_collection_rule_id:
        report.collection.append(await checker.check_dcr(settings.data_collection_rule_id, settings.facility, settings.priority))
    if settings.workspace_resource_id:
        report.collection.append(await checker.check_workspace(settings.workspace_resource_id, settings.facility, settings.priority))

    if settings.remediate and settings.check == "VMSSExtension":
        await _remediate(report, settings, checker, kube_api_client)
    report.arm_requests = checker.clients.request_total - before
    return report


async def _check_container_insights(
    groups: A.NodeGroups, nodes: Sequence[Mapping[str, Any]], kube_api_client: Any | None
) -> list[A.ScaleSetResult]:
    now = datetime.now(timezone.utc)
    if kube_api_client is None:
        return [A.ScaleSetResult(ref=r, nodes=n, state="Error", agent=None, checked_at=now,
                                 message="ContainerInsights check needs the cluster (no Kubernetes client)")
                for r, n in groups.scale_sets.items()]
    try:
        ds, pods = await asyncio.to_thread(fetch_ama_logs, kube_api_client)
    except Exception as e:  # noqa: BLE001 - any failure is the Container Insights verdict
        status = getattr(e, "status", None)
        msg = (f"reading kube-system/ama-logs failed: {type(e).__name__}"
               + (f" {status}" if status else "")
               + (" (grant get on daemonsets and list on pods in kube-system)" if status == 403 else ""))
        return [A.ScaleSetResult(ref=r, nodes=n, state="Error", agent=None, message=msg, checked_at=now)
                for r, n in groups.scale_sets.items()]
    by_name = {A.node_name(n): n for n in nodes}
    return [A.ScaleSetResult.from_verdict(r, n, A.container_insights_verdict(n, by_name, ds, pods), checked_at=now)
            for r, n in groups.scale_sets.items()]


async def _remediate(report: A.AgentReport, settings: AgentSettings, checker: AgentChecker, kube_api_client: Any) -> None:
    todo = [s for s in report.scale_sets if s.state in ("Missing", "Failed")]
    if not todo:
        return
    workspace = None
    if settings.remediation_extension == A.OMS:
        if settings.workspace_secret is None or kube_api_client is None:
            for s in todo:
                s.remediation = "not attempted: OmsAgentForLinux needs remediation.workspaceSecretRef and the cluster"
            return
        name, ns, idk, keyk = settings.workspace_secret
        try:
            workspace = await asyncio.to_thread(read_workspace_secret, kube_api_client, name, ns, idk, keyk)
        except Exception as e:  # noqa: BLE001 - any failure: no remediation, said why
            for s in todo:
                s.remediation = f"not attempted: cannot read Secret {ns}/{name} ({type(e).__name__})"
            return
    sem = asyncio.Semaphore(max(1, checker.clients.options.concurrency))

    async def one(s: A.ScaleSetResult) -> None:
        async with sem:
            s.remediation = await checker.remediate(
                s.ref, settings.remediation_extension, workspace=workspace,
                data_collection_rule_id=settings.data_collection_rule_id)

    await asyncio.gather(*(one(s) for s in todo))
