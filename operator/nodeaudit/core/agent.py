"""Monitoring-agent verdicts: which scale sets ship syslog to Log Analytics, and why not.

Pure: this module imports nothing of Azure, HTTP or Kubernetes (only the pure ``nodeaudit.core.nodes``
for label matching and the OS label, and ``nodeaudit.core.status`` for short name lists). The edge (``nodeaudit.azure.facts``) turns
SDK objects into the small facts defined here (``ExtensionFact``, ``SyslogSource``), and this module
turns facts into verdicts, reports, conditions and tables.

The path of the data: Node objects -> ``parse_provider_id`` -> ``group_nodes`` (one entry per scale
set) -> the edge lists each scale set's extensions once -> ``extension_verdict`` -> ``AgentReport``
-> ``agent_condition`` / ``agent_status`` / ``render_table`` / ``report_to_json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from nodeaudit.core.delivery import DeliveryVerdict
from nodeaudit.core.nodes import matches, node_os
from nodeaudit.core.policy import NodeAuditPolicySpec, parse_duration
from nodeaudit.core.status import few_names

# -- names -----------------------------------------------------------------------------------------

AMA = "AzureMonitorLinuxAgent"
OMS = "OmsAgentForLinux"
DEFAULT_EXTENSION_TYPES: tuple[str, ...] = (OMS, AMA)
#: The publisher of each known agent type. An extension of a known type from another publisher is
#: not an agent (somebody's look-alike); unknown types in ``extensionTypes`` are taken from anyone.
KNOWN_PUBLISHERS: dict[str, str] = {
    OMS.lower(): "Microsoft.EnterpriseCloud.Monitoring",
    AMA.lower(): "Microsoft.Azure.Monitor",
}
OMS_RETIRED_ON = "2024-08-31"
OMS_RETIRED_WARNING = (
    f"{OMS} (the Log Analytics agent) is retired since {OMS_RETIRED_ON}: migrate to {AMA} "
    "with a Data Collection Rule (syslog facility authpriv)"
)
EXTENSIONS_READ_PERMISSION = "Microsoft.Compute/virtualMachineScaleSets/extensions/read"
READER_ROLE_HINT = "grant the operator's identity Reader on the node resource group"
CONDITION_TYPE = "AgentReady"

CheckKind = Literal["Auto", "VMSSExtension", "ContainerInsights", "None"]
CHECK_KINDS: tuple[str, ...] = ("Auto", "VMSSExtension", "ContainerInsights", "None")
#: The one check that asks nothing of ARM or the cluster (see ``AgentSettings.runs``).
CHECK_DISABLED = "None"
CHECK_DISABLED_MESSAGE = "monitoringAgent.check is None: the agent is not checked"
#: Present: an agent is installed and provisioned. Missing: none of the accepted types.
#: Failed: an agent exists but its provisioning failed. Pending: it is being created/updated.
#: Error: the check itself failed (permission, throttling, timeout, bad response). Skipped: check None.
State = Literal["Present", "Missing", "Failed", "Pending", "Error", "Skipped"]
LACKING_STATES: frozenset[str] = frozenset({"Missing", "Failed", "Pending"})

# -- settings --------------------------------------------------------------------------------------


@dataclass
class AgentSettings:
    """``spec.monitoringAgent`` + ``spec.syslog`` as plain values (see ``settings_from_spec``)."""

    check: str = "Auto"
    extension_types: tuple[str, ...] = DEFAULT_EXTENSION_TYPES
    data_collection_rule_id: str | None = None
    workspace_resource_id: str | None = None
    interval_seconds: float = 3600.0
    remediate: bool = False
    remediation_extension: str = AMA
    workspace_secret: tuple[str, str, str, str] | None = None  # name, namespace, id key, key key
    facility: str = "LOG_AUTHPRIV"
    priority: str = "LOG_INFO"
    workspace_id: str | None = None  # the workspace's customer id (arrival query)
    delivery_grace_seconds: float = 900.0

    @property
    def runs(self) -> bool:
        """Whether the check asks anything of ARM or the cluster: the one place that decides
        "check is None" (the operator then makes no client at all, the report says Skipped)."""
        return self.check != CHECK_DISABLED


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
        remediation_extension=rem.extension if rem is not None else AMA,
        workspace_secret=(ref.name, ref.namespace, ref.workspace_id_key, ref.workspace_key_key) if ref else None,
        facility=str(syslog.facility),
        priority=str(syslog.priority),
        workspace_id=ma.workspace_id,
        delivery_grace_seconds=parse_duration(ma.delivery_grace).total_seconds(),
    )


def settings_problem(settings: AgentSettings) -> str | None:
    """Why these settings cannot be checked at all (an unknown check kind, facility or level), or None."""
    if settings.check not in CHECK_KINDS:
        return f"unknown monitoringAgent.check {settings.check!r}"
    try:
        facility_name(settings.facility)
        severity_name(settings.priority)
    except ValueError as e:
        return str(e)
    return None


def disabled_condition() -> tuple[str, str, str]:
    """(status, reason, message) of ``AgentReady`` when the check does not run."""
    return "True", "CheckDisabled", CHECK_DISABLED_MESSAGE


# -- providerID -> scale set -----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ScaleSetRef:
    """One VM scale set. ``key`` compares case-insensitively, as ARM does."""

    subscription: str
    resource_group: str
    name: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.subscription.lower(), self.resource_group.lower(), self.name.lower())

    @property
    def resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachineScaleSets/{self.name}"
        )

    @property
    def label(self) -> str:
        return f"{self.resource_group}/{self.name}"


@dataclass(frozen=True)
class NotCheckable:
    """A node whose monitoring agent cannot be checked through a scale set, and why."""

    reason: str


_SEG = r"[^/\s]+"
_VMSS_RE = re.compile(
    rf"^azure:///subscriptions/(?P<sub>{_SEG})/resourceGroups/(?P<rg>{_SEG})"
    rf"/providers/Microsoft\.Compute/virtualMachineScaleSets/(?P<vmss>{_SEG})/virtualMachines/(?P<vm>{_SEG})/?$",
    re.IGNORECASE,
)
_VM_RE = re.compile(
    rf"^azure:///subscriptions/{_SEG}/resourceGroups/{_SEG}/providers/Microsoft\.Compute/virtualMachines/{_SEG}/?$",
    re.IGNORECASE,
)


def parse_provider_id(provider_id: object) -> ScaleSetRef | NotCheckable:
    """``spec.providerID`` of a node -> its scale set, or why it has none. Never raises."""
    if not isinstance(provider_id, str) or not provider_id.strip():
        return NotCheckable("node has no spec.providerID (not yet initialised by the cloud provider?)")
    pid = provider_id.strip()
    m = _VMSS_RE.match(pid)
    if m:
        return ScaleSetRef(m.group("sub"), m.group("rg"), m.group("vmss"))
    if _VM_RE.match(pid):
        return NotCheckable(
            "node is a standalone VM (VirtualMachines node pool or availability set), not a VM scale set; "
            "check its VM extensions instead"
        )
    scheme = pid.split("://", 1)[0] if "://" in pid else ""
    if scheme.lower() != "azure":
        return NotCheckable(f"not an Azure node (providerID scheme {scheme or 'missing'!r})")
    return NotCheckable("unrecognised Azure providerID (expected .../virtualMachineScaleSets/<vmss>/virtualMachines/<n>)")


def node_name(node: Mapping[str, Any]) -> str:
    meta = node.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) and name else "<unnamed>"


def _node_labels(node: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = node.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return labels if isinstance(labels, Mapping) else {}


def node_scale_set(node: Mapping[str, Any]) -> ScaleSetRef | NotCheckable:
    """A Node object (a dict as the API returns it) -> its scale set, or why not."""
    os_name = node_os(_node_labels(node))
    if os_name != "linux":
        return NotCheckable(f"not a Linux node (kubernetes.io/os={os_name})")
    spec = node.get("spec")
    pid = spec.get("providerID") if isinstance(spec, Mapping) else None
    return parse_provider_id(pid)


@dataclass
class NodeGroups:
    """Nodes grouped by scale set (in first-seen order) plus the nodes that have none."""

    scale_sets: dict[ScaleSetRef, list[str]] = field(default_factory=dict)
    not_checkable: dict[str, str] = field(default_factory=dict)


def group_nodes(nodes: Iterable[Mapping[str, Any]]) -> NodeGroups:
    groups = NodeGroups()
    canonical: dict[tuple[str, str, str], ScaleSetRef] = {}
    for node in nodes:
        if not isinstance(node, Mapping):
            continue
        name = node_name(node)
        where = node_scale_set(node)
        if isinstance(where, NotCheckable):
            groups.not_checkable[name] = where.reason
            continue
        ref = canonical.setdefault(where.key, where)
        groups.scale_sets.setdefault(ref, []).append(name)
    return groups


# -- extensions -> verdict -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtensionFact:
    """What matters of one scale-set extension (the edge fills it from either SDK generation)."""

    name: str | None
    type: str | None
    publisher: str | None
    provisioning_state: str | None
    type_handler_version: str | None = None


@dataclass(frozen=True)
class AgentVerdict:
    state: State
    agent: str | None
    message: str
    warnings: tuple[str, ...] = ()


def _is_agent(ext: ExtensionFact, wanted: Mapping[str, str]) -> str | None:
    """The canonical agent type name when ``ext`` is one of the wanted agents, else None."""
    if not ext.type:
        return None
    canon = wanted.get(ext.type.lower())
    if canon is None:
        return None
    expected = KNOWN_PUBLISHERS.get(canon.lower())
    if expected and ext.publisher and ext.publisher.lower() != expected.lower():
        return None
    return canon


def extension_verdict(extensions: Sequence[ExtensionFact], extension_types: Sequence[str]) -> AgentVerdict:
    """The agent verdict of one scale set from its extension list."""
    wanted = {t.lower(): t for t in extension_types if t}
    if not wanted:
        return AgentVerdict("Error", None, "monitoringAgent.extensionTypes is empty: nothing counts as an agent")
    found: list[tuple[str, ExtensionFact]] = []
    for ext in extensions:
        canon = _is_agent(ext, wanted)
        if canon:
            found.append((canon, ext))
    if not found:
        seen = sorted({e.type or e.name or "?" for e in extensions})
        return AgentVerdict(
            "Missing",
            None,
            f"no monitoring agent ({', '.join(wanted.values())}) among the scale set's extensions"
            + (f" [{', '.join(seen)}]" if seen else " (it has none)"),
        )

    def rank(item: tuple[str, ExtensionFact]) -> tuple[int, int]:
        canon, ext = item
        ok = (ext.provisioning_state or "").lower() == "succeeded"
        return (0 if ok else 1, 0 if canon == AMA else 1)

    found.sort(key=rank)
    canon, ext = found[0]
    state_raw = ext.provisioning_state or "unknown"
    warnings = (OMS_RETIRED_WARNING,) if any(c == OMS for c, _ in found) else ()
    label = f"{canon} ({ext.name})" if ext.name and ext.name != canon else canon
    if state_raw.lower() == "succeeded":
        msg = f"{label} provisioned"
        if canon == OMS:
            msg += f"; retired since {OMS_RETIRED_ON}"
        return AgentVerdict("Present", canon, msg, warnings)
    if state_raw.lower() in ("creating", "updating"):
        return AgentVerdict("Pending", canon, f"{label} provisioningState {state_raw}", warnings)
    return AgentVerdict("Failed", canon, f"{label} provisioningState {state_raw}", warnings)


# -- syslog collection (DCR / workspace) ------------------------------------------------------------

#: syslog(3) severities, most severe first (index = numeric severity).
SEVERITIES: tuple[str, ...] = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_SEVERITY_ALIASES = {
    "emergency": "emerg", "panic": "emerg", "critical": "crit", "error": "err", "warn": "warning",
    "information": "info", "informational": "info",
}
#: DCR ``logLevels`` spelling of each severity.
DCR_LEVELS: dict[str, str] = {
    "emerg": "Emergency", "alert": "Alert", "crit": "Critical", "err": "Error",
    "warning": "Warning", "notice": "Notice", "info": "Info", "debug": "Debug",
}
FACILITIES: frozenset[str] = frozenset({
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
})


def facility_name(facility: str) -> str:
    """``LOG_AUTHPRIV`` / ``authpriv`` -> ``authpriv``; raises ValueError on an unknown facility."""
    f = facility.strip().lower()
    f = f[4:] if f.startswith("log_") else f
    if f not in FACILITIES:
        raise ValueError(f"unknown syslog facility {facility!r}")
    return f


def severity_name(priority: str) -> str:
    """``LOG_INFO`` / ``Info`` / ``info`` -> ``info``; raises ValueError on an unknown level."""
    p = priority.strip().lower()
    p = p[4:] if p.startswith("log_") else p
    p = _SEVERITY_ALIASES.get(p, p)
    if p not in SEVERITIES:
        raise ValueError(f"unknown syslog level {priority!r}")
    return p


@dataclass(frozen=True)
class SyslogSource:
    """One syslog data source: a DCR ``dataSources.syslog[]`` item or a workspace LinuxSyslog source."""

    name: str | None
    facilities: tuple[str, ...]
    levels: tuple[str, ...]
    streams: tuple[str, ...] = ()


@dataclass(frozen=True)
class CollectionResult:
    kind: Literal["DataCollectionRule", "Workspace"]
    resource_id: str
    state: Literal["Collected", "NotCollected", "Error"]
    message: str


def _accepts(values: Iterable[str], wanted: str, normalise: Any) -> bool:
    for v in values:
        if not isinstance(v, str):
            continue
        if v.strip() == "*":
            return True
        try:
            if normalise(v) == wanted:
                return True
        except ValueError:
            continue
    return False


def dcr_collection_verdict(
    resource_id: str,
    sources: Sequence[SyslogSource],
    flow_streams: Sequence[str],
    facility: str,
    priority: str,
) -> CollectionResult:
    """Does a Data Collection Rule collect ``facility`` at ``priority``?

    A DCR lists its log levels explicitly (the portal's "minimum level" writes every level from
    there up), so the policy's level itself must be listed (or ``*``), and the ``Microsoft-Syslog``
    stream must flow to a destination.
    """
    fac, sev = facility_name(facility), severity_name(priority)
    want = f"{fac}.{sev}"
    if not sources:
        return CollectionResult("DataCollectionRule", resource_id, "NotCollected",
                                f"the DCR has no syslog data source: add one with facility {fac} at level {DCR_LEVELS[sev]}")
    by_fac = [s for s in sources if _accepts(s.facilities, fac, facility_name)]
    if not by_fac:
        return CollectionResult("DataCollectionRule", resource_id, "NotCollected",
                                f"no syslog data source of the DCR has facility {fac}")
    by_level = [s for s in by_fac if _accepts(s.levels, sev, severity_name)]
    if not by_level:
        have = sorted({lvl for s in by_fac for lvl in s.levels})
        return CollectionResult("DataCollectionRule", resource_id, "NotCollected",
                                f"facility {fac} is collected only at levels [{', '.join(have)}], not {DCR_LEVELS[sev]}")
    streams = {st.lower() for s in by_level for st in s.streams}
    if streams and "microsoft-syslog" not in streams:
        return CollectionResult("DataCollectionRule", resource_id, "NotCollected",
                                f"the syslog data source for {fac} does not emit the Microsoft-Syslog stream")
    if not any(s.lower() == "microsoft-syslog" for s in flow_streams):
        return CollectionResult("DataCollectionRule", resource_id, "NotCollected",
                                "no dataFlow of the DCR sends Microsoft-Syslog to a Log Analytics workspace")
    names = ", ".join(sorted({s.name or "?" for s in by_level}))
    return CollectionResult("DataCollectionRule", resource_id, "Collected", f"{want} collected by data source {names}")


def workspace_collection_verdict(
    resource_id: str, sources: Sequence[SyslogSource], facility: str, priority: str
) -> CollectionResult:
    """Does a workspace's legacy LinuxSyslog data sources collect ``facility`` at ``priority``?"""
    fac, sev = facility_name(facility), severity_name(priority)
    by_fac = [s for s in sources if _accepts(s.facilities, fac, facility_name)]
    if not by_fac:
        return CollectionResult("Workspace", resource_id, "NotCollected",
                                f"the workspace has no LinuxSyslog data source for facility {fac}")
    if not any(_accepts(s.levels, sev, severity_name) for s in by_fac):
        have = sorted({lvl for s in by_fac for lvl in s.levels})
        return CollectionResult("Workspace", resource_id, "NotCollected",
                                f"facility {fac} is collected only at [{', '.join(have)}], not {sev}")
    return CollectionResult("Workspace", resource_id, "Collected", f"{fac}.{sev} collected (LinuxSyslog)")


def collection_error(kind: Literal["DataCollectionRule", "Workspace"], resource_id: str, message: str) -> CollectionResult:
    return CollectionResult(kind, resource_id, "Error", message)


# -- Container Insights: does the ama-logs DaemonSet admit / cover a node? -------------------------


def _tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
        if not isinstance(tol, Mapping):
            continue
        effect = tol.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        op = tol.get("operator") or "Equal"
        key = tol.get("key")
        if op == "Exists" and not key:
            return True
        if key != taint.get("key"):
            continue
        if op == "Exists" or (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def pod_spec_admits_node(pod_spec: Mapping[str, Any], node: Mapping[str, Any]) -> tuple[bool, str]:
    """Would a DaemonSet with this pod template run on ``node``? (nodeSelector, required node
    affinity, tolerations of NoSchedule/NoExecute taints). Returns (admitted, reason-if-not)."""
    labels = _node_labels(node)
    selector = pod_spec.get("nodeSelector") or {}
    if isinstance(selector, Mapping):
        for k, v in selector.items():
            if labels.get(k) != v:
                return False, f"nodeSelector {k}={v} does not match"
    affinity = pod_spec.get("affinity") or {}
    node_aff = affinity.get("nodeAffinity") if isinstance(affinity, Mapping) else None
    required = node_aff.get("requiredDuringSchedulingIgnoredDuringExecution") if isinstance(node_aff, Mapping) else None
    if isinstance(required, Mapping):
        terms = [t for t in (required.get("nodeSelectorTerms") or []) if isinstance(t, Mapping)]
        if terms and not any(
            matches({"matchExpressions": t.get("matchExpressions") or []}, labels) for t in terms
        ):
            return False, "required node affinity does not match"
    spec = node.get("spec")
    taints = spec.get("taints") if isinstance(spec, Mapping) else None
    tolerations = [t for t in (pod_spec.get("tolerations") or []) if isinstance(t, Mapping)]
    for taint in taints or []:
        if not isinstance(taint, Mapping) or taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not _tolerates(tolerations, taint):
            return False, f"taint {taint.get('key')}={taint.get('value') or ''}:{taint.get('effect')} not tolerated"
    return True, ""


def container_insights_verdict(
    node_names: Sequence[str],
    nodes_by_name: Mapping[str, Mapping[str, Any]],
    daemonset: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
) -> AgentVerdict:
    """The ama-logs verdict for the nodes of one scale set."""
    if daemonset is None:
        return AgentVerdict("Missing", None, "DaemonSet kube-system/ama-logs not found (Container Insights is not enabled)")
    template = daemonset.get("spec", {}).get("template", {}) if isinstance(daemonset.get("spec"), Mapping) else {}
    pod_spec = template.get("spec", {}) if isinstance(template, Mapping) else {}
    running: set[str] = set()
    placed: set[str] = set()
    for pod in pods:
        spec = pod.get("spec")
        status = pod.get("status")
        host = spec.get("nodeName") if isinstance(spec, Mapping) else None
        if not isinstance(host, str):
            continue
        placed.add(host)
        if isinstance(status, Mapping) and status.get("phase") == "Running":
            running.add(host)
    not_admitted: list[str] = []
    waiting: list[str] = []
    for name in node_names:
        if name in running:
            continue
        node = nodes_by_name.get(name, {"metadata": {"name": name}})
        ok, why = pod_spec_admits_node(pod_spec if isinstance(pod_spec, Mapping) else {}, node)
        if not ok:
            not_admitted.append(f"{name} ({why})")
        else:
            waiting.append(name)
    if not_admitted:
        return AgentVerdict("Missing", "ama-logs",
                            f"ama-logs does not run on {len(not_admitted)} node(s): {few_names(not_admitted)}")
    if waiting:
        return AgentVerdict("Pending", "ama-logs",
                            f"ama-logs admits but is not running on {len(waiting)} node(s): {few_names(waiting)}")
    return AgentVerdict("Present", "ama-logs", f"ama-logs running on all {len(node_names)} node(s)")


# -- the report ------------------------------------------------------------------------------------


@dataclass
class ScaleSetResult:
    ref: ScaleSetRef
    nodes: list[str]
    state: State
    agent: str | None
    message: str
    warnings: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    checked_at: datetime | None = None
    cached: bool = False
    remediation: str | None = None

    @classmethod
    def from_verdict(cls, ref: ScaleSetRef, nodes: list[str], v: AgentVerdict, **kw: Any) -> ScaleSetResult:
        return cls(ref=ref, nodes=nodes, state=v.state, agent=v.agent, message=v.message, warnings=v.warnings, **kw)


@dataclass
class AgentReport:
    check: str
    scale_sets: list[ScaleSetResult] = field(default_factory=list)
    not_checkable: dict[str, str] = field(default_factory=dict)
    collection: list[CollectionResult] = field(default_factory=list)
    arm_requests: int = 0
    errors: list[str] = field(default_factory=list)
    #: Auto only: the managed cluster, the DCRs associated with it (and the policy's), the verdict
    cluster: ClusterResult | None = None
    dcrs: list[DcrFact] = field(default_factory=list)
    path: PathVerdict | None = None
    #: arrival (``nodeaudit check-agent``): did the nodes' canaries reach the workspace
    delivery: DeliveryVerdict | None = None

    @property
    def check_errors(self) -> list[str]:
        """Every part of the check that could not be completed, as ``where: why``."""
        out = [f"{s.ref.label}: {s.message}" for s in self.failed_checks]
        if self.cluster is not None and self.cluster.state in ("Error", "Unresolved"):
            out.append(f"cluster {self.cluster.resource_id or '?'}: {self.cluster.message}")
        out += [f"{c.resource_id}: {c.message}" for c in self.collection if c.state == "Error"]
        return out + list(self.errors)

    @property
    def lacking(self) -> list[ScaleSetResult]:
        return [s for s in self.scale_sets if s.state in LACKING_STATES]

    @property
    def failed_checks(self) -> list[ScaleSetResult]:
        return [s for s in self.scale_sets if s.state == "Error"]

    @property
    def collection_missing(self) -> list[CollectionResult]:
        return [c for c in self.collection if c.state == "NotCollected"]

    @property
    def exit_code(self) -> int:
        """0 every scale set has an agent (and collection is confirmed where asked); 1 one lacks it;
        3 the check could not be completed (errors win: an incomplete answer is not a clean one;
        2 is the usage error's, as for every command: docs/cli.md).
        Auto: 0 a path ships the records (whatever else failed), else 3 on errors, else 1.
        Arrival, when asked: a query that failed makes it 3, a canary missing at least 1."""
        code = self._agent_exit_code
        if self.delivery is not None:
            if self.delivery.reason == "QueryFailed":
                return 3
            if self.delivery.status == "False":
                return max(code, 1)
        return code

    @property
    def _agent_exit_code(self) -> int:
        if self.path is not None:
            return 0 if self.path.ok else (3 if self.check_errors else 1)
        if self.errors or self.failed_checks or any(c.state == "Error" for c in self.collection):
            return 3
        if self.lacking or self.collection_missing:
            return 1
        return 0


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def agent_condition(
    report: AgentReport, *, observed_generation: int | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """The ``AgentReady`` condition (metav1.Condition shape) for the policy status."""
    if report.check == CHECK_DISABLED:
        status, reason, message = disabled_condition()
    elif report.path is not None:
        problems = report.check_errors
        if report.path.ok:
            status, reason, message = "True", report.path.reason, report.path.message
            retired = [s.ref.label for s in report.scale_sets if s.agent == OMS]
            if retired:
                message += f"; {OMS} (retired since {OMS_RETIRED_ON}) on {', '.join(retired)}"
        elif problems:
            status, reason = "Unknown", "CheckFailed"
            message = "check failed: " + "; ".join(problems) + f"; {report.path.message}"
        else:
            status, reason, message = "False", report.path.reason, report.path.message
    elif report.errors or report.failed_checks or any(c.state == "Error" for c in report.collection):
        problems = [f"{s.ref.label}: {s.message}" for s in report.failed_checks]
        problems += [f"{c.resource_id}: {c.message}" for c in report.collection if c.state == "Error"]
        problems += report.errors
        missing = [s.ref.label for s in report.lacking]
        status = "False" if missing else "Unknown"
        reason = "AgentMissing" if missing else "CheckFailed"
        message = (f"no agent on {', '.join(missing)}; " if missing else "") + "check failed: " + "; ".join(problems)
    elif report.lacking:
        status, reason = "False", "AgentMissing"
        message = "scale sets without a working monitoring agent: " + "; ".join(
            f"{s.ref.label} ({s.state}: {s.message})" for s in report.lacking
        )
    elif report.collection_missing:
        status, reason = "False", "SyslogNotCollected"
        message = "; ".join(f"{c.kind} {c.resource_id}: {c.message}" for c in report.collection_missing)
    elif not report.scale_sets:
        status, reason = "True", "NoScaleSets"
        message = "no node of this policy runs in a VM scale set"
        if report.not_checkable:
            message += f" ({len(report.not_checkable)} node(s) not checkable)"
    else:
        status, reason = "True", "AgentPresent"
        message = f"all {len(report.scale_sets)} scale set(s) have a monitoring agent"
        if any(s.warnings for s in report.scale_sets):
            retired = [s.ref.label for s in report.scale_sets if s.agent == OMS]
            if retired:
                message += f"; {OMS} (retired since {OMS_RETIRED_ON}) on {', '.join(retired)}"
    cond: dict[str, Any] = {
        "type": CONDITION_TYPE,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": _iso(now or datetime.now(timezone.utc)),
    }
    if observed_generation is not None:
        cond["observedGeneration"] = observed_generation
    return cond


def agent_status(report: AgentReport) -> list[dict[str, Any]]:
    """The per-scale-set list for the policy status (node counts, not names: 500 names don't fit)."""
    out: list[dict[str, Any]] = []
    for s in report.scale_sets:
        item: dict[str, Any] = {
            "subscription": s.ref.subscription,
            "resourceGroup": s.ref.resource_group,
            "scaleSet": s.ref.name,
            "nodes": len(s.nodes),
            "state": s.state,
            "agent": s.agent or "",
            "message": s.message,
        }
        if s.checked_at:
            item["lastChecked"] = _iso(s.checked_at)
        if s.warnings:
            item["warnings"] = list(s.warnings)
        if s.remediation:
            item["remediation"] = s.remediation
        out.append(item)
    return out


def report_to_json(report: AgentReport) -> dict[str, Any]:
    return {
        "check": report.check,
        "exitCode": report.exit_code,
        "armRequests": report.arm_requests,
        "scaleSets": [
            {
                **item,
                "resourceId": s.ref.resource_id,
                "nodeNames": list(s.nodes),
                "extensions": list(s.extensions),
                "cached": s.cached,
            }
            for item, s in zip(agent_status(report), report.scale_sets, strict=True)
        ],
        "notCheckable": [{"node": n, "reason": r} for n, r in sorted(report.not_checkable.items())],
        "collection": [
            {"kind": c.kind, "resourceId": c.resource_id, "state": c.state, "message": c.message}
            for c in report.collection
        ],
        "errors": list(report.errors),
        **({"cluster": {"resourceId": report.cluster.resource_id, "state": report.cluster.state,
                        "message": report.cluster.message}} if report.cluster is not None else {}),
        **({"path": {"ok": report.path.ok, "reason": report.path.reason, "message": report.path.message,
                     "fix": report.path.fix}} if report.path is not None else {}),
        **({"delivery": {"status": report.delivery.status, "reason": report.delivery.reason,
                         "message": report.delivery.message, "arrived": report.delivery.arrived,
                         "expected": report.delivery.expected, "missing": list(report.delivery.missing),
                         "deliveredAt": dict(report.delivery.delivered_at)}} if report.delivery is not None else {}),
    }


def render_json(report: AgentReport) -> str:
    return json.dumps(report_to_json(report), indent=2, sort_keys=False)


def render_table(report: AgentReport) -> str:
    """A plain-text table: SCALE SET, NODES, AGENT, STATE, MESSAGE (then notes)."""
    rows = [("SCALE SET", "NODES", "AGENT", "STATE", "MESSAGE")]
    for s in report.scale_sets:
        rows.append((s.ref.label, str(len(s.nodes)), s.agent or "-", s.state, s.message))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:4])) + "  " + r[4] for r in rows
    ]
    if len(rows) == 1:
        lines.append("(no scale sets)")
    for s in report.scale_sets:
        for w in s.warnings:
            lines.append(f"warning: {s.ref.label}: {w}")
        if s.remediation:
            lines.append(f"remediation: {s.ref.label}: {s.remediation}")
    if report.cluster is not None:
        lines.append(f"cluster: {report.cluster.resource_id or '?'}: {report.cluster.state}: {report.cluster.message}")
    for c in report.collection:
        lines.append(f"collection: {c.kind} {c.resource_id}: {c.state}: {c.message}")
    if report.path is not None:
        lines.append(f"path: {'ok' if report.path.ok else 'none'}: {report.path.reason}: {report.path.message}")
    if report.delivery is not None:
        lines.append(f"arrival: Delivered={report.delivery.status} {report.delivery.reason}: {report.delivery.message}")
    for n, r in sorted(report.not_checkable.items()):
        lines.append(f"not checkable: node {n}: {r}")
    for e in report.errors:
        lines.append(f"error: {e}")
    return "\n".join(lines) + "\n"



# -- Auto: the cluster's add-on, its Data Collection Rules, the scale sets' agents ------------------

CLUSTER_ID_SETTING = "NODEAUDIT_CLUSTER_RESOURCE_ID"
CI_ADDON = "omsagent"


@dataclass(frozen=True)
class ClusterFact:
    """What matters of a managedClusters resource for syslog collection."""

    resource_id: str
    name: str
    resource_group: str
    location: str | None
    #: where ARM reports Container Insights on: ``addonProfiles.omsagent`` or
    #: ``azureMonitorProfile.containerInsights`` (None: it is off)
    addon_via: str | None
    workspace_resource_id: str | None = None
    managed_identity: bool = False


@dataclass(frozen=True)
class DcrFact:
    """A Data Collection Rule: its syslog sources and the streams it sends to a Log Analytics workspace."""

    resource_id: str
    name: str
    sources: tuple[SyslogSource, ...]
    #: streams of the dataFlows whose destinations include a ``logAnalytics`` destination
    workspace_streams: tuple[str, ...]
    workspaces: tuple[str, ...] = ()  # the logAnalytics destinations' workspaceResourceId


def dcr_fix_command(dcr: DcrFact, facility: str, priority: str) -> str:
    """The ``az`` command that makes ``dcr`` collect ``facility`` at ``priority`` (and above)."""
    fac, sev = facility_name(facility), severity_name(priority)
    rg = _arm_segment(dcr.resource_id, "resourcegroups") or "<resource-group>"
    levels = " ".join(DCR_LEVELS[s] for s in SEVERITIES[: SEVERITIES.index(sev) + 1][::-1])
    by_fac = [s for s in dcr.sources if s.facilities]
    if not by_fac:
        return (f"az monitor data-collection rule syslog add -g {rg} --rule-name {dcr.name} --name nodeaudit-{fac} "
                f"--facility-names {fac} --log-levels {levels} --streams Microsoft-Syslog")
    source = by_fac[0]
    facilities = sorted({*(f for f in source.facilities if f != "*"), fac})
    return (f"az monitor data-collection rule syslog update -g {rg} --rule-name {dcr.name} --name {source.name or 'sysLogsDataSource'} "
            f"--facility-names {' '.join(facilities)} --log-levels {levels}")


def _arm_segment(resource_id: str, key: str) -> str | None:
    parts = [p for p in resource_id.split("/") if p]
    low = [p.lower() for p in parts]
    return parts[low.index(key) + 1] if key in low and low.index(key) + 1 < len(parts) else None


def enable_syslog_command(cluster: ClusterFact) -> str:
    ws = f" --workspace-resource-id {cluster.workspace_resource_id}" if cluster.workspace_resource_id else ""
    return (f"az aks enable-addons -a monitoring --enable-msi-auth-for-monitoring --enable-syslog "
            f"-g {cluster.resource_group} -n {cluster.name}{ws}")


@dataclass
class ClusterResult:
    """The managed cluster's part of an Auto check (``state``: AddonOn, AddonOff, Error, Unresolved)."""

    resource_id: str | None
    state: Literal["AddonOn", "AddonOff", "Error", "Unresolved"]
    message: str
    fact: ClusterFact | None = None


@dataclass
class PathVerdict:
    """Whether some path ships the policy's records to a workspace, and if not what to do."""

    ok: bool
    reason: str
    message: str
    fix: str | None = None


def auto_path_verdict(
    cluster: ClusterResult | None,
    dcrs: Sequence[DcrFact],
    dcr_results: Sequence[CollectionResult],
    scale_sets: Sequence[ScaleSetResult],
    facility: str,
    priority: str,
) -> PathVerdict:
    """The ``Auto`` verdict: Container Insights (the add-on with a syslog DCR associated with the
    cluster) or the extension path (AzureMonitorLinuxAgent on every scale set with a DCR). The first
    path that ships ``facility`` at ``priority`` makes it True; otherwise the most specific gap, in
    the words of the fix."""
    fac, sev = facility_name(facility), severity_name(priority)
    want = f"{fac}.{sev} ({fac} at {DCR_LEVELS[sev]})"
    collected = [(d, r) for d, r in zip(dcrs, dcr_results, strict=True) if r.state == "Collected"]
    addon = cluster is not None and cluster.fact is not None and cluster.fact.addon_via is not None
    lacking_ama = [s for s in scale_sets if s.agent != AMA or s.state != "Present"]
    if addon and collected:
        d, r = collected[0]
        assert cluster is not None and cluster.fact is not None
        return PathVerdict(True, "ContainerInsights",
                           f"Container Insights ({cluster.fact.addon_via}) on {cluster.fact.name} ships {want}: "
                           f"DCR {d.name}: {r.message}")
    if scale_sets and not lacking_ama and collected:
        d, r = collected[0]
        return PathVerdict(True, "AzureMonitorAgent",
                           f"{AMA} on all {len(scale_sets)} scale set(s) ships {want}: DCR {d.name}: {r.message}")
    # no path: say the gap of the path that is closest to working
    if addon:
        assert cluster is not None and cluster.fact is not None
        with_syslog = [(d, r) for d, r in zip(dcrs, dcr_results, strict=True) if d.sources]
        if not with_syslog:
            fix = enable_syslog_command(cluster.fact)
            names = ", ".join(d.name for d in dcrs) or "none"
            return PathVerdict(False, "SyslogNotEnabled",
                               f"Container Insights is on for {cluster.fact.name}, but syslog collection is off "
                               f"(no DCR associated with the cluster has a syslog data source; associated: {names}): "
                               f"run `{fix}`", fix)
        d, r = with_syslog[0]
        fix = dcr_fix_command(d, facility, priority)
        return PathVerdict(False, "SyslogNotCollected",
                           f"Container Insights is on for {cluster.fact.name}, but DCR {d.name} does not ship {want}: "
                           f"{r.message}: run `{fix}`", fix)
    if scale_sets and not lacking_ama:
        if dcrs:
            d, r = dcrs[0], dcr_results[0]
            fix = dcr_fix_command(d, facility, priority)
            return PathVerdict(False, "SyslogNotCollected",
                               f"{AMA} runs on every scale set, but DCR {d.name} does not ship {want}: {r.message}: "
                               f"run `{fix}`", fix)
        return PathVerdict(False, "NoDataCollectionRule",
                           f"{AMA} runs on every scale set, but no Data Collection Rule is associated with the cluster "
                           f"or named in monitoringAgent.dataCollectionRuleId: create one that collects {want} and "
                           f"associate it (az monitor data-collection rule association create --name nodeaudit-syslog "
                           f"--rule-id <dcr-id> --resource <scale-set-id>)")
    names = ", ".join(s.ref.label for s in lacking_ama) or "the cluster"
    retired = [s.ref.label for s in scale_sets if s.agent == OMS]
    where = cluster.fact if cluster is not None and cluster.fact is not None else None
    fix = (enable_syslog_command(where) if where is not None
           else "az aks enable-addons -a monitoring --enable-msi-auth-for-monitoring --enable-syslog -g <rg> -n <cluster>")
    msg = (f"no path ships {want} to Log Analytics: the monitoring add-on is off"
           + (f" ({cluster.message})" if cluster is not None and cluster.state != "AddonOff" else "")
           + f" and {AMA} is missing on {names}")
    if retired:
        msg += f" ({OMS} on {', '.join(retired)} is retired since {OMS_RETIRED_ON} and is not counted)"
    return PathVerdict(False, "NoCollectionPath", f"{msg}: run `{fix}`", fix)
