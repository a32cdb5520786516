"""The checker: one ARM read per resource per interval, every failure a verdict.

``AgentChecker`` keeps the clients and a per-scale-set verdict cache across intervals (TTL a little
below the interval; a scale set not seen before is checked at once; errors are never cached), holds
at most ``concurrency`` calls in flight and gives every read a hard deadline. Remediation (opt-in)
lives here too: it is the one place that writes to ARM.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from nodeaudit.azure.clients import ArmClients
from nodeaudit.azure.facts import (
    cluster_fact,
    dcr_fact,
    describe_error,
    extension_fact,
    parse_arm_id,
    parse_arm_id_subscription,
    workspace_source_fact,
)
from nodeaudit.core import agent as A
from nodeaudit.core import delivery as D

log = logging.getLogger("nodeaudit.azure.checker")

AMA_PUBLISHER = "Microsoft.Azure.Monitor"
OMS_PUBLISHER = "Microsoft.EnterpriseCloud.Monitoring"
EXTENSION_SPECS: dict[str, dict[str, Any]] = {
    A.AMA: {"publisher": AMA_PUBLISHER, "typeHandlerVersion": "1.0", "enableAutomaticUpgrade": True},
    A.OMS: {"publisher": OMS_PUBLISHER, "typeHandlerVersion": "1.13"},
}
DCR_ASSOCIATION_NAME = "nodeaudit-syslog"


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
    #: Auto's reads (cluster, associations, DCRs) by key -> (monotonic time, value); errors never kept
    _reads: dict[tuple[str, ...], tuple[float, Any]] = field(default_factory=dict)
    #: node resource group (sub, rg, lower) -> the cluster id in its managedBy: it never changes
    _cluster_ids: dict[tuple[str, str], str] = field(default_factory=dict)

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

    def describe(self, e: BaseException, *, what: str, permission: str, scope: str, logs: bool = False) -> str:
        message = describe_error(e, what=what, permission=permission, scope=scope,
                                 endpoint=self.clients.logs_endpoint if logs else self.clients.endpoint,
                                 retry_note=self.retry_note, service="Log Analytics" if logs else "ARM")
        if isinstance(e, asyncio.TimeoutError) and self.clients.last_error:
            # the deadline cut the SDK's retries short: name what the last attempt met
            last = self.clients.last_error[0]
            message += f"; last attempt: {' '.join(str(last).split())[:300] or type(last).__name__}"
        return message

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
            msg = self.describe(e, what="listing extensions", permission=A.EXTENSIONS_READ_PERMISSION,
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
        """The policy's ``dataCollectionRuleId``: one read per interval, judged as Auto judges its rules."""
        _, results = await self.check_rules([resource_id], facility, priority)
        return results[0]

    # -- Auto: the managed cluster, its rule associations, the DCRs -------------------------------

    async def _read(self, key: tuple[str, ...], fetch: Callable[[], Any]) -> Any:
        """``fetch()`` once per TTL (the interval): a second check in the same interval reads nothing."""
        hit = self._reads.get(key)
        if hit is not None and self.clock() - hit[0] < self.ttl:
            return hit[1]
        value = await self._bounded(fetch())
        self._reads[key] = (self.clock(), value)
        return value

    async def cluster_id(self, scale_sets: Sequence[A.ScaleSetRef]) -> str:
        """The managed cluster's resource id: ``NODEAUDIT_CLUSTER_RESOURCE_ID`` when set, else the
        ``managedBy`` of the node resource group the nodes' providerIDs name (one read, kept).
        Raises ValueError (no scale set, no managedBy) or the SDK's error."""
        if self.clients.cluster_resource_id:
            return self.clients.cluster_resource_id
        if not scale_sets:
            raise ValueError(f"no node runs in a VM scale set, so no node resource group names the cluster: "
                             f"set {A.CLUSTER_ID_SETTING}")
        ref = scale_sets[0]
        key = (ref.subscription.lower(), ref.resource_group.lower())
        if key not in self._cluster_ids:
            from azure.core.rest import HttpRequest

            client = self.clients.compute(ref.subscription)
            request = HttpRequest("GET", f"/subscriptions/{ref.subscription}/resourcegroups/{ref.resource_group}",
                                  params={"api-version": "2021-04-01"})
            response = await self._bounded(client.send_request(request))
            response.raise_for_status()
            managed_by = (response.json() or {}).get("managedBy")
            if not isinstance(managed_by, str) or "/managedclusters/" not in managed_by.lower():
                raise ValueError(f"node resource group {ref.resource_group} has no managedBy naming an AKS cluster: "
                                 f"set {A.CLUSTER_ID_SETTING}")
            self._cluster_ids[key] = managed_by
        return self._cluster_ids[key]

    async def check_cluster(self, scale_sets: Sequence[A.ScaleSetRef]) -> A.ClusterResult:
        """One managedClusters read (per interval): is the monitoring add-on on?"""
        try:
            resource_id = await self.cluster_id(scale_sets)
        except ValueError as e:
            return A.ClusterResult(None, "Unresolved", str(e))
        except Exception as e:  # noqa: BLE001 - any failure to resolve the cluster is the cluster's verdict
            scope = f"node resource group {scale_sets[0].resource_group}" if scale_sets else "?"
            return A.ClusterResult(None, "Error", self.describe(
                e, what="reading the node resource group (its managedBy names the cluster)",
                permission="Microsoft.Resources/subscriptions/resourceGroups/read (Reader on the node resource group)",
                scope=scope))
        try:
            sub, rg, name = parse_arm_id(resource_id, "Microsoft.ContainerService/managedClusters")
        except ValueError as e:
            return A.ClusterResult(resource_id, "Unresolved", f"{A.CLUSTER_ID_SETTING}: {e}")
        try:
            mc = await self._read(("cluster", resource_id.lower()),
                                  lambda: self.clients.containerservice(sub).managed_clusters.get(rg, name))
        except Exception as e:  # noqa: BLE001 - any failure to read the cluster is the cluster's verdict
            return A.ClusterResult(resource_id, "Error", self.describe(
                e, what="reading the managed cluster",
                permission="Microsoft.ContainerService/managedClusters/read (Reader on the cluster)", scope=resource_id))
        fact = cluster_fact(mc, resource_id)
        if fact.addon_via is None:
            return A.ClusterResult(resource_id, "AddonOff", "the monitoring add-on (Container Insights) is off", fact)
        ws = f" to {fact.workspace_resource_id}" if fact.workspace_resource_id else ""
        auth = "managed identity" if fact.managed_identity else "legacy workspace key (no useAADAuth)"
        return A.ClusterResult(resource_id, "AddonOn", f"Container Insights on ({fact.addon_via}, {auth}){ws}", fact)

    async def associated_rules(self, resource_id: str) -> list[str]:
        """The ids of the DCRs associated with a resource (one list per interval; endpoint
        associations, which name no rule, are left out)."""
        async def fetch() -> list[str]:
            monitor = self.clients.monitor(parse_arm_id_subscription(resource_id))
            pager = monitor.data_collection_rule_associations.list_by_resource(resource_id.lstrip("/"))
            out: list[str] = []
            async for item in pager:
                rule = getattr(item, "data_collection_rule_id", None)
                if isinstance(rule, str) and rule:
                    out.append(rule)
            return out

        value: list[str] = await self._read(("associations", resource_id.lower()), fetch)
        return value

    async def read_dcr(self, resource_id: str) -> A.DcrFact:
        """One DCR read per interval -> its facts. Raises ValueError or the SDK's error."""
        sub, rg, name = parse_arm_id(resource_id, "Microsoft.Insights/dataCollectionRules")
        dcr = await self._read(("dcr", resource_id.lower()),
                               lambda: self.clients.monitor(sub).data_collection_rules.get(rg, name))
        return dcr_fact(dcr, resource_id)

    async def check_rules(self, rule_ids: Sequence[str], facility: str, priority: str
                          ) -> tuple[list[A.DcrFact], list[A.CollectionResult]]:
        """Read each DCR once and judge it (errors are results with state Error, no fact)."""
        facts: list[A.DcrFact] = []
        results: list[A.CollectionResult] = []
        errors: list[A.CollectionResult] = []
        seen: set[str] = set()
        for rid in rule_ids:
            if rid.lower() in seen:
                continue
            seen.add(rid.lower())
            try:
                fact = await self.read_dcr(rid)
            except Exception as e:  # noqa: BLE001 - any failure is this rule's verdict
                errors.append(A.collection_error("DataCollectionRule", rid, str(e) if isinstance(e, ValueError) else self.describe(
                    e, what="reading the Data Collection Rule",
                    permission="Microsoft.Insights/dataCollectionRules/read (Monitoring Reader on the rule)", scope=rid)))
                continue
            facts.append(fact)
            results.append(A.dcr_collection_verdict(fact.resource_id, fact.sources, fact.workspace_streams,
                                                    facility, priority))
        return facts, results + errors

    # -- arrival: one Log Analytics query per policy per interval ---------------------------------

    async def check_arrival(self, policy: str, records: Mapping[str, Mapping[str, Any] | None], *,
                            workspace_resource_id: str | None, workspace_id: str | None,
                            grace_seconds: float, now: float | None = None) -> D.DeliveryVerdict:
        """Ask the workspace which of the nodes' latest canaries arrived: one bounded query
        (time range from the oldest canary asked for, at most ``row_limit`` rows), never raises."""
        workspace = workspace_resource_id or workspace_id
        if not workspace:
            return D.no_workspace()
        now = time.time() if now is None else now
        sent, without = D.sent_canaries(records)
        if not sent:
            return D.delivery_verdict(sent, without, {}, now=now, grace_seconds=grace_seconds, workspace=workspace)
        limit = D.row_limit(sent)
        query = D.canary_query(policy, limit)
        span = D.query_window(sent, now)
        logs = self.clients.logs()
        try:
            if workspace_resource_id:
                result = await self._bounded(logs.query_resource(workspace_resource_id, query, timespan=span,
                                                                 server_timeout=60))
            else:
                result = await self._bounded(logs.query_workspace(workspace_id, query, timespan=span, server_timeout=60))
        except Exception as e:  # noqa: BLE001 - any failure is the arrival verdict
            return D.query_failed(self.describe(
                e, what="querying the workspace for the canaries", logs=True,
                permission=f"Microsoft.OperationalInsights/workspaces/query/read (grant {D.ROLE} on the workspace)",
                scope=workspace))
        tables = getattr(result, "tables", None) or getattr(result, "partial_data", None) or []
        if not tables:
            error = getattr(result, "partial_error", None)
            return D.query_failed(f"the workspace answered without a table{': ' + str(error) if error else ''}")
        table = tables[0]
        arrived = D.parse_rows(list(getattr(table, "columns", []) or []), list(getattr(table, "rows", []) or []))
        rows = len(getattr(table, "rows", []) or [])
        return D.delivery_verdict(sent, without, arrived, now=now, grace_seconds=grace_seconds, workspace=workspace,
                                  truncated=rows >= limit)

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
            return A.collection_error("Workspace", resource_id, self.describe(
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
            return "remediation failed: " + self.describe(e, what=step, permission=perm, scope=ref.resource_id)
        finally:
            self.invalidate(ref)
        log.info("installed %s on %s and upgraded its instances", extension, ref.label)
        return f"installed {extension} ({spec['publisher']}) and upgraded all instances"


def ttl_for_interval(interval_seconds: float) -> float:
    """The cache TTL for a check interval: a little below it, so each interval refreshes once."""
    return max(1.0, interval_seconds * 0.9)
