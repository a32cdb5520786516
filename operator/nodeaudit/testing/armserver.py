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
from datetime import datetime, timezone
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


#: Every DCR syslog level, as ``logLevels`` spells them (a rule's "minimum level" lists them all from there up).
LEVELS_FROM = {"Debug": ["Debug", "Info", "Notice", "Warning", "Error", "Critical", "Alert", "Emergency"]}
LEVELS_FROM["Info"] = LEVELS_FROM["Debug"][1:]
LEVELS_FROM["Warning"] = LEVELS_FROM["Debug"][3:]
WORKSPACE_ID = "/subscriptions/s/resourceGroups/monitoring/providers/Microsoft.OperationalInsights/workspaces/law"
WORKSPACE_CUSTOMER_ID = "6f1b6c9a-2a9b-4b3e-9a55-0d2a1c3e4f50"


def managed_cluster(sub: str, rg: str, name: str, node_rg: str, *, location: str = "westeurope",
                    addon: bool = True, via: str = "addonProfiles", workspace: str = WORKSPACE_ID) -> dict[str, Any]:
    """A managedClusters GET body (2026-08-01 shape) with the monitoring add-on on or off.

    ``via``: ``addonProfiles`` (the ``omsagent`` add-on, managed identity: ``useAADAuth``) or
    ``azureMonitorProfile`` (``containerInsights.enabled``), the two ways ARM reports Container Insights.
    """
    props: dict[str, Any] = {
        "provisioningState": "Succeeded", "powerState": {"code": "Running"}, "kubernetesVersion": "1.33.2",
        "dnsPrefix": name, "fqdn": f"{name}-dns-1a2b3c4d.hcp.{location}.azmk8s.io", "nodeResourceGroup": node_rg,
        "agentPoolProfiles": [{"name": "user", "count": 3, "vmSize": "Standard_D4s_v5", "type": "VirtualMachineScaleSets",
                               "osType": "Linux", "osSKU": "Ubuntu", "mode": "User"}],
        "addonProfiles": {"azurepolicy": {"enabled": False}},
    }
    if addon and via == "addonProfiles":
        props["addonProfiles"]["omsagent"] = {
            "enabled": True,
            "config": {"logAnalyticsWorkspaceResourceID": workspace, "useAADAuth": "true"},
            "identity": {"resourceId": f"/subscriptions/{sub}/resourcegroups/{node_rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/omsagent-{name}",
                         "clientId": "00000000-0000-0000-0000-0000000000c1", "objectId": "00000000-0000-0000-0000-0000000000c2"},
        }
    elif not addon:
        props["addonProfiles"]["omsagent"] = {"enabled": False, "config": None}
    if addon and via == "azureMonitorProfile":
        props["azureMonitorProfile"] = {"metrics": {"enabled": False},
                                        "containerInsights": {"enabled": True, "logAnalyticsWorkspaceResourceId": workspace}}
    return {
        "id": f"/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}",
        "location": location, "name": name, "type": "Microsoft.ContainerService/ManagedClusters",
        "identity": {"type": "SystemAssigned", "principalId": "00000000-0000-0000-0000-0000000000a1",
                     "tenantId": "00000000-0000-0000-0000-0000000000a2"},
        "sku": {"name": "Base", "tier": "Standard"},
        "properties": props,
    }


def resource_group(sub: str, name: str, managed_by: str | None, location: str = "westeurope") -> dict[str, Any]:
    """A resource group GET body; AKS's node resource group carries ``managedBy`` = the cluster id."""
    body: dict[str, Any] = {"id": f"/subscriptions/{sub}/resourceGroups/{name}", "name": name, "type": "Microsoft.Resources/resourceGroups",
                            "location": location, "properties": {"provisioningState": "Succeeded"}}
    if managed_by:
        body["managedBy"] = managed_by
    return body


def msci_dcr(sub: str, rg: str, cluster: str, *, location: str = "westeurope", syslog: list[str] | None = None,
             levels: list[str] | None = None, workspace: str = WORKSPACE_ID) -> dict[str, Any]:
    """The DCR ``az aks enable-addons -a monitoring`` creates (``MSCI-<region>-<cluster>``): the
    ContainerInsights extension source, and with ``--enable-syslog`` a syslog source and the
    Microsoft-Syslog stream in the dataFlow. ``syslog=None``: created without ``--enable-syslog``."""
    name = f"MSCI-{location}-{cluster}"
    streams = ["Microsoft-ContainerInsights-Group-Default"]
    sources: dict[str, Any] = {"extensions": [{
        "name": "ContainerInsightsExtension", "extensionName": "ContainerInsights", "streams": list(streams),
        "extensionSettings": {"dataCollectionSettings": {"interval": "1m", "namespaceFilteringMode": "Off", "enableContainerLogV2": True}},
    }]}
    if syslog is not None:
        sources["syslog"] = [{"name": "sysLogsDataSource", "streams": ["Microsoft-Syslog"], "facilityNames": syslog,
                              "logLevels": levels or LEVELS_FROM["Debug"]}]
        streams.append("Microsoft-Syslog")
    return {
        "id": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Insights/dataCollectionRules/{name}",
        "name": name, "type": "Microsoft.Insights/dataCollectionRules", "location": location, "kind": "Linux",
        "properties": {
            "immutableId": "dcr-0123456789abcdef0123456789abcdef",
            "dataSources": sources,
            "destinations": {"logAnalytics": [{"name": "ciworkspace", "workspaceResourceId": workspace,
                                               "workspaceId": WORKSPACE_CUSTOMER_ID}]},
            "dataFlows": [{"streams": streams, "destinations": ["ciworkspace"]}],
            "provisioningState": "Succeeded",
        },
    }


def association(scope: str, name: str, rule_id: str | None = None, endpoint_id: str | None = None) -> dict[str, Any]:
    """One dataCollectionRuleAssociations item (2023-03-11 shape): to a rule, or to an endpoint."""
    props: dict[str, Any] = {"provisioningState": "Succeeded"}
    if rule_id:
        props["dataCollectionRuleId"] = rule_id
        props["description"] = "Association of data collection rule. Deleting this association will break the data collection for this resource."
    if endpoint_id:
        props["dataCollectionEndpointId"] = endpoint_id
    return {"id": f"{scope}/providers/Microsoft.Insights/dataCollectionRuleAssociations/{name}", "name": name,
            "type": "Microsoft.Insights/dataCollectionRuleAssociations", "etag": '"0b00c1c6-0000-0100-0000-65a1b2c30000"',
            "systemData": {"createdBy": "aks", "createdByType": "Application", "createdAt": "2025-01-01T00:00:00Z"},
            "properties": props}


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
_CLUSTER = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.ContainerService/managedClusters/([^/]+)$", re.I)
_RG = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)$", re.I)
_DCRA_LIST = re.compile(r"^/+(subscriptions/.+)/providers/Microsoft\.Insights/dataCollectionRuleAssociations$", re.I)
_QUERY = re.compile(r"^/v1/(?:workspaces/([^/]+)|(subscriptions/.+))/query$", re.I)
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
        self.clusters: dict[str, Resp] = {}  # cluster name (lower) -> response
        self.resource_groups: dict[str, Resp] = {}  # resource group name (lower) -> response
        self.rule_associations: dict[str, list[dict[str, Any]]] = {}  # resource id (lower, no leading /) -> items
        #: Log Analytics: the ``Syslog`` table of each workspace (customer id or resource id, lower)
        self.syslog: dict[str, list[dict[str, Any]]] = {}
        self.queries: list[tuple[str, dict[str, Any]]] = []
        #: a test hook for the query endpoint: (workspace, body) -> a response, or None for the default
        self.query_override: Callable[[str, dict[str, Any]], Resp | None] | None = None
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
        for d in (self.extensions, self.pages, self.scripts, self.dcrs, self.datasources, self.kube,
                  self.clusters, self.resource_groups, self.rule_associations, self.syslog):
            d.clear()
        self.queries.clear()
        self.query_override = None
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
        m = _QUERY.match(path)
        if m and request.method == "POST":
            return await self._send(self._query((m.group(1) or m.group(2)).lower(), json.loads(await request.read() or b"{}")))
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
        m = _CLUSTER.match(path)
        if m and request.method == "GET":
            return await self._send(self.clusters.get(m.group(3).lower(), Resp(404, {"error": {
                "code": "ResourceNotFound", "message": f"The Resource 'Microsoft.ContainerService/managedClusters/{m.group(3)}' "
                                                       f"under resource group '{m.group(2)}' was not found."}})))
        m = _DCRA_LIST.match(path)
        if m and request.method == "GET":
            return await self._send(Resp(200, {"value": self.rule_associations.get(m.group(1).lower(), [])}))
        m = _RG.match(path)
        if m and request.method == "GET":
            return await self._send(self.resource_groups.get(m.group(2).lower(), Resp(404, {"error": {
                "code": "ResourceGroupNotFound", "message": f"Resource group '{m.group(2)}' could not be found."}})))
        m = _DS.match(path)
        if m and request.method == "GET":
            return await self._send(self.datasources.get(m.group(3).lower(), Resp(200, {"value": []})))
        return await self._send(Resp(404, {"error": {"code": "NotFound", "message": f"no route {request.method} {path}"}}))

    def _query(self, workspace: str, body: dict[str, Any]) -> Resp:
        """The Log Analytics query API (``POST /v1/workspaces/{id}/query``, or ``/v1/{resourceId}/query``).

        It runs no KQL: it answers the canary query (``nodeaudit.core.delivery.canary_query``) from the
        workspace's ``Syslog`` rows, applying what that query asks: the timespan, the canary marker,
        the latest row per node, and the ``take`` bound. The answer has the API's table shape."""
        with self.lock:
            self.queries.append((workspace, body))
        forced = self.query_override(workspace, body) if self.query_override else None
        if forced is not None:
            return forced
        if workspace not in self.syslog:
            return Resp(404, {"error": {"code": "WorkspaceNotFoundError", "message": f"workspace {workspace} not found"}})
        from nodeaudit.core import delivery

        rows = answer_canary_query(self.syslog[workspace], body.get("query", ""), body.get("timespan"))
        return Resp(200, {"tables": [{"name": "PrimaryResult", "columns": [
            {"name": c, "type": t} for c, t in delivery.CANARY_COLUMNS], "rows": rows}]})

    def ship_canary(self, workspace: str, node: str, canary: str, policy: str, at: int) -> None:
        """The ``Syslog`` row a node's agent makes of apply.sh's canary (audisp-syslog's USER line)."""
        self.ingest(workspace, node, f"type=USER msg=audit({at}.120:77): pid=4242 uid=0 auid=4294967295 "
                                     f"ses=4294967295 subj=unconfined msg='text=nodeaudit-canary id={canary} policy={policy} "
                                     f'exe="/usr/sbin/auditctl" hostname=? addr=? terminal=? res=success\'')

    def ingest(self, workspace: str, node: str, message: str, *, at: float | None = None,
               facility: str = "authpriv", severity: str = "info") -> None:
        """One ``Syslog`` row, as the agent would ship it from ``node`` (``workspace``: customer id
        or resource id)."""
        t = time.time() if at is None else at
        row = {"TimeGenerated": datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z"),
               "Computer": node, "Facility": facility, "SeverityLevel": severity, "ProcessName": "audispd",
               "SyslogMessage": message}
        with self.lock:
            self.syslog.setdefault(workspace.lstrip("/").lower(), []).append(row)

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


def seed_aks(arm: ArmServer, sub: str, node_rg: str, *, rg: str = "rg-demo", cluster: str = "aks-demo",
             syslog: list[str] | None = None) -> str:
    """A cluster as ``az aks create`` + ``az aks enable-addons -a monitoring --enable-syslog`` leave
    it: the node resource group's managedBy, the cluster with the add-on, the MSCI DCR associated
    with it (``syslog``: its facilities), an empty ``Syslog`` table in the workspace. Returns the
    cluster id."""
    cluster_id = f"/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{cluster}"
    msci = msci_dcr(sub, rg, cluster, syslog=["auth", "authpriv", "daemon"] if syslog is None else syslog)
    arm.resource_groups[node_rg.lower()] = Resp(200, resource_group(sub, node_rg, cluster_id))
    arm.clusters[cluster.lower()] = Resp(200, managed_cluster(sub, rg, cluster, node_rg))
    arm.dcrs[str(msci["name"]).lower()] = Resp(200, msci)
    arm.rule_associations[cluster_id.lstrip("/").lower()] = [
        association(cluster_id, "ContainerInsightsExtension", rule_id=str(msci["id"]))]
    arm.syslog.setdefault(WORKSPACE_ID.lstrip("/").lower(), [])
    return cluster_id


def _span(timespan: str | None) -> tuple[datetime, datetime] | None:
    """The API's ``timespan`` (``start/end`` ISO 8601, as the SDK sends a (start, end) pair)."""
    if not timespan or "/" not in timespan:
        return None
    a, b = timespan.split("/", 1)

    def parse(v: str) -> datetime:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))

    return parse(a), parse(b)


def answer_canary_query(rows: list[dict[str, Any]], query: str, timespan: str | None) -> list[list[Any]]:
    """What ``nodeaudit.core.delivery.canary_query`` asks of the ``Syslog`` table, applied to
    ``rows``: within the timespan, the canaries of the policy the query names, the newest per
    node (by the time in the canary id), at most the ``take`` count."""
    from nodeaudit.core import delivery

    policy = re.search(r'policy == "([a-z0-9-]+)"', query)
    take = re.search(r"\| take (\d+)", query)
    span = _span(timespan)
    newest: dict[str, list[Any]] = {}
    for row in rows:
        t = datetime.fromisoformat(str(row["TimeGenerated"]).replace("Z", "+00:00"))
        if span is not None and not (span[0] <= t <= span[1]):
            continue
        m = delivery.CANARY_RE.search(str(row.get("SyslogMessage", "")))
        if m is None or (policy is not None and m.group(2) != policy.group(1)):
            continue
        canary = m.group(1)
        node, _, rest = canary.split(":")
        at = int(rest.split("-")[0])
        if node not in newest or at > newest[node][1]:
            newest[node] = [node, at, canary, row["TimeGenerated"]]
    out = list(newest.values())
    return out[: int(take.group(1))] if take else out


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
