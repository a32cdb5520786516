"""A local https ARM endpoint for the Azure tests, the operator tests, the benchmark and the demo (127.0.0.1 only).

aiohttp in a background thread with a trustme certificate. It serves the paths the real SDK
clients call — scale-set extensions (list with nextLink paging, create_or_update), manualupgrade
(an LRO), Data Collection Rules and their associations, workspace data sources — plus a few
Kubernetes paths for the ContainerInsights check, and it counts every request.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiohttp import web

TOKEN = "test-arm-token-do-not-log"


@dataclass
class Resp:
    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


# -- realistic payloads ---------------------------------------------------------------------------


def ext(name: str, publisher: str, typ: str, state: str = "Succeeded", version: str = "1.0", **props: Any) -> dict[str, Any]:
    return {
        "name": name,
        "id": f"/subscriptions/x/resourceGroups/x/providers/Microsoft.Compute/virtualMachineScaleSets/x/extensions/{name}",
        "type": "Microsoft.Compute/virtualMachineScaleSets/extensions",
        "properties": {
            "publisher": publisher,
            "type": typ,
            "typeHandlerVersion": version,
            "autoUpgradeMinorVersion": True,
            "settings": {},
            "provisioningState": state,
            "suppressFailures": False,
            **props,
        },
    }


def aks_extensions() -> list[dict[str, Any]]:
    """What an AKS node pool's scale set carries without any monitoring agent."""
    return [
        ext("vmssCSE", "Microsoft.Azure.Extensions", "CustomScript", version="2.0"),
        ext("AKSLinuxBilling", "Microsoft.AKS", "Compute.AKS.Linux.Billing"),
        ext("AKSLinuxExtension", "Microsoft.AKS", "Compute.AKS.Linux.AKSNode", provisionAfterExtensions=["vmssCSE"]),
    ]


def ama(state: str = "Succeeded") -> dict[str, Any]:
    return ext("AzureMonitorLinuxAgent", "Microsoft.Azure.Monitor", "AzureMonitorLinuxAgent", state=state, version="1.33",
               enableAutomaticUpgrade=True)


def oms(state: str = "Succeeded") -> dict[str, Any]:
    return ext("OmsAgentForLinux", "Microsoft.EnterpriseCloud.Monitoring", "OmsAgentForLinux", state=state, version="1.19",
               settings={"workspaceId": "00000000-0000-0000-0000-000000000000"})


#: The REST specification's generated examples (VirtualMachineScaleSetExtensions_List_*_Gen).
SPEC_MAXIMUM = {
    "value": [
        {
            "name": "{extension-name}",
            "type": "aaaaa",
            "id": "aaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "properties": {
                "forceUpdateTag": "aaaaaaaaa",
                "publisher": "{extension-Publisher}",
                "type": "{extension-Type}",
                "typeHandlerVersion": "1.2",
                "autoUpgradeMinorVersion": True,
                "enableAutomaticUpgrade": True,
                "settings": {},
                "provisioningState": "aaaaaaaaaaaaaa",
                "provisionAfterExtensions": ["aa"],
                "suppressFailures": True,
            },
        },
        {"name": "aaaaaaaaaaaaaaaaa", "type": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "id": "aaaaaaaaaaaaaaaaaaaaaa",
         "properties": {"publisher": "aaaaaaaaaaa", "type": "aaaaaaaaaa", "provisioningState": "aaaaaaa"}},
    ],
}
SPEC_MINIMUM: dict[str, Any] = {"value": [{}]}


def dcr_body(facilities: list[str], levels: list[str], *, flow: bool = True, name: str = "sysLogsDataSource") -> dict[str, Any]:
    return {
        "id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Insights/dataCollectionRules/d",
        "name": "d", "type": "Microsoft.Insights/dataCollectionRules", "location": "westeurope",
        "properties": {
            "dataSources": {"syslog": [{"name": name, "streams": ["Microsoft-Syslog"],
                                        "facilityNames": facilities, "logLevels": levels}]},
            "destinations": {"logAnalytics": [{"name": "la", "workspaceResourceId": "/subscriptions/s/resourceGroups/g/providers/Microsoft.OperationalInsights/workspaces/w"}]},
            "dataFlows": ([{"streams": ["Microsoft-Syslog"], "destinations": ["la"]}] if flow else []),
            "provisioningState": "Succeeded",
        },
    }


def linux_syslog(name: str, facility: str, severities: list[str]) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/s/resourceGroups/g/providers/Microsoft.OperationalInsights/workspaces/w/dataSources/{name}",
        "name": name, "type": "Microsoft.OperationalInsights/workspaces/dataSources", "kind": "LinuxSyslog",
        "properties": {"syslogName": facility, "syslogSeverities": [{"severity": s} for s in severities]},
    }


# -- the server -----------------------------------------------------------------------------------

_EXT_LIST = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Compute/virtualMachineScaleSets/([^/]+)/extensions$", re.I)
_EXT_ONE = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Compute/virtualMachineScaleSets/([^/]+)/extensions/([^/]+)$", re.I)
_UPGRADE = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Compute/virtualMachineScaleSets/([^/]+)/manualupgrade$", re.I)
_DCR = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Insights/dataCollectionRules/([^/]+)$", re.I)
_DCRA = re.compile(r"^(/subscriptions/.+)/providers/Microsoft\.Insights/dataCollectionRuleAssociations/([^/]+)$", re.I)
_DS = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.OperationalInsights/workspaces/([^/]+)/dataSources$", re.I)


class ArmServer:
    def __init__(self, tmpdir: str) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = f"{tmpdir}/arm-ca.pem"
        self.ca.cert_pem.write_to_path(self.ca_file)
        self._ssl = cert.configure_cert  # applied to an SSLContext below
        self.token = TOKEN
        self.log: list[tuple[str, str]] = []
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        # scale set name (lower) -> list of extension dicts (one page), list of pages, or a script
        self.extensions: dict[str, list[dict[str, Any]]] = {}
        self.pages: dict[str, list[list[dict[str, Any]]]] = {}
        self.scripts: dict[str, list[Resp | Callable[[], Resp]]] = {}
        self.default_extensions: Callable[[str], list[dict[str, Any]]] | None = None
        self.dcrs: dict[str, Resp] = {}
        self.datasources: dict[str, Resp] = {}
        self.puts: list[tuple[str, dict[str, Any]]] = []
        self.upgrades: list[tuple[str, dict[str, Any]]] = []
        self.associations: list[tuple[str, dict[str, Any]]] = []
        self.kube: dict[str, Resp] = {}
        #: a test hook: (method, path) -> a response to send instead, or None to route as usual
        self.override: Callable[[str, str], Resp | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle --
    def start(self) -> ArmServer:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl(ctx)
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx, backlog=1024)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="arm-server", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("ARM test server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.log.clear()
            self.counts.clear()
        for d in (self.extensions, self.pages, self.scripts, self.dcrs, self.datasources, self.kube):
            d.clear()
        self.puts.clear()
        self.upgrades.clear()
        self.associations.clear()
        self.default_extensions = None
        self.override = None
        self.token = TOKEN

    def list_calls(self, name: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, p in self.log if m == "GET" and p.lower().endswith("/extensions")
                       and (name is None or f"/virtualmachinescalesets/{name.lower()}/" in p.lower()))

    # -- handling --
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        with self.lock:
            self.log.append((request.method, path))
            self.counts[request.method] += 1
        forced = self.override(request.method, path) if self.override else None
        if forced is not None:
            return await self._send(forced)
        if path.startswith("/api/") or path.startswith("/apis/"):
            return await self._send(self.kube.get(path, Resp(404, {"kind": "Status", "code": 404, "reason": "NotFound"})))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return await self._send(Resp(401, {"error": {"code": "InvalidAuthenticationToken", "message": "The access token is invalid."}}))
        if "api-version" not in request.query:
            return await self._send(Resp(400, {"error": {"code": "MissingApiVersionParameter", "message": "api-version missing"}}))
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        m = _EXT_LIST.match(path)
        if m and request.method == "GET":
            return await self._send(self._ext_list(m.group(3).lower(), request))
        m = _EXT_ONE.match(path)
        if m and request.method == "PUT":
            self.puts.append((m.group(3), body))
            props = dict(body.get("properties", {}))
            props.pop("protectedSettings", None)  # ARM never returns these
            props["provisioningState"] = "Succeeded"
            out = {"name": m.group(4), "id": path, "type": "Microsoft.Compute/virtualMachineScaleSets/extensions", "properties": props}
            self.extensions.setdefault(m.group(3).lower(), []).append(out)
            return await self._send(Resp(201, out))
        m = _UPGRADE.match(path)
        if m and request.method == "POST":
            self.upgrades.append((m.group(3), body))
            op = f"{self.endpoint}/subscriptions/{m.group(1)}/providers/Microsoft.Compute/locations/westeurope/operations/op-{len(self.upgrades)}?api-version=2024-11-01"
            return await self._send(Resp(202, None, headers={"Location": op, "Azure-AsyncOperation": op, "Retry-After": "0"}))
        if "/operations/op-" in path and request.method == "GET":
            return await self._send(Resp(200, {"status": "Succeeded", "startTime": "2025-01-01T00:00:00Z"}))
        m = _DCR.match(path)
        if m and request.method == "GET":
            return await self._send(self.dcrs.get(m.group(3).lower(), Resp(404, {"error": {"code": "ResourceNotFound", "message": "not found"}})))
        m = _DCRA.match(path)
        if m and request.method == "PUT":
            self.associations.append((m.group(1), body))
            return await self._send(Resp(200, {"id": path, "name": m.group(2), **(body or {})}))
        m = _DS.match(path)
        if m and request.method == "GET":
            return await self._send(self.datasources.get(m.group(3).lower(), Resp(200, {"value": []})))
        return await self._send(Resp(404, {"error": {"code": "NotFound", "message": f"no route {request.method} {path}"}}))

    def _ext_list(self, name: str, request: web.Request) -> Resp:
        script = self.scripts.get(name)
        if script:
            step = script.pop(0) if len(script) > 1 else script[0]
            return step() if callable(step) else step
        pages = self.pages.get(name)
        if pages:
            i = int(request.query.get("$skiptoken", "0"))
            body: dict[str, Any] = {"value": pages[i]}
            if i + 1 < len(pages):
                body["nextLink"] = f"{self.endpoint}{request.path}?api-version={request.query['api-version']}&$skiptoken={i + 1}"
            return Resp(200, body)
        if name in self.extensions:
            return Resp(200, {"value": self.extensions[name]})
        if self.default_extensions is not None:
            return Resp(200, {"value": self.default_extensions(name)})
        return Resp(404, {"error": {"code": "ResourceNotFound", "message": f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/{name}' was not found."}})

    async def _send(self, r: Resp) -> web.Response:
        if r.delay:
            await asyncio.sleep(r.delay)
        headers = {"x-ms-request-id": f"req-{time.monotonic_ns()}", **r.headers}
        if r.raw is not None:
            return web.Response(status=r.status, body=r.raw, headers=headers, content_type="application/json")
        if r.body is None:
            return web.Response(status=r.status, headers=headers)
        return web.Response(status=r.status, text=json.dumps(r.body), headers=headers, content_type="application/json")


def vmss_node(name: str, sub: str, rg: str, vmss: str, index: int = 0, **extra: Any) -> dict[str, Any]:
    labels = {"kubernetes.io/os": "linux", "kubernetes.azure.com/agentpool": vmss.split("-")[1] if "-" in vmss else vmss}
    labels.update(extra.pop("labels", {}))
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"providerID": f"azure:///subscriptions/{sub}/resourceGroups/{rg.lower()}/providers/Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines/{index}", **extra},
    }


@contextmanager
def running_arm_server(directory: str) -> Iterator[ArmServer]:
    """A started server, stopped on exit: what the azure and operator suites' session fixtures share."""
    server = ArmServer(directory).start()
    try:
        yield server
    finally:
        server.stop()
