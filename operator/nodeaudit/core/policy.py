"""The NodeAuditPolicy model: one place that says what a valid policy is.

The CRD schema (crd.py) is generated from these classes and the operator, the CLI and the
renderer all read policies through them, so a field is documented, defaulted and checked once.
The schema rejects what OpenAPI can express (enums, ranges, patterns); the validators here reject
the rest (audit-rule grammar, cross-field rules) with messages that name the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from nodeaudit.core import presets as presets_mod
from nodeaudit.core.rules import grammar as rules_mod

API_GROUP = "nodeaudit.io"
API_VERSION = "v1alpha1"
KIND = "NodeAuditPolicy"
PLURAL = "nodeauditpolicies"

# Policy names become label values, file names and Job-name parts: a DNS-1123 label keeps all
# three legal without escaping.
POLICY_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
POLICY_NAME_MAX = 63
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
PERCENT_OR_INT_PATTERN = r"^(100|[1-9]?[0-9])%$"
SYSLOG_FACILITIES = (
    "LOG_AUTH", "LOG_AUTHPRIV", "LOG_DAEMON", "LOG_USER", "LOG_SYSLOG",
    "LOG_LOCAL0", "LOG_LOCAL1", "LOG_LOCAL2", "LOG_LOCAL3",
    "LOG_LOCAL4", "LOG_LOCAL5", "LOG_LOCAL6", "LOG_LOCAL7",
)
SYSLOG_PRIORITIES = (
    "LOG_EMERG", "LOG_ALERT", "LOG_CRIT", "LOG_ERR",
    "LOG_WARNING", "LOG_NOTICE", "LOG_INFO", "LOG_DEBUG",
)

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the place (`spec.rules[1]: ...`)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_duration(text: str) -> timedelta:
    """Go-style durations as Kubernetes users write them: `90s`, `6h`, `1h30m`, `7d`."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r} (examples: 30s, 15m, 6h, 1h30m, 7d)")
    seconds = 0.0
    for number, _fraction, unit in re.findall(r"([0-9]+(\.[0-9]+)?)(ms|s|m|h|d)", text):
        seconds += float(number) * _DURATION_UNITS[unit]
    return timedelta(seconds=seconds)


class _Model(BaseModel):
    """Shared config: camelCase in YAML, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


class LabelSelectorRequirement(_Model):
    """One matchExpressions entry, as in metav1.LabelSelectorRequirement."""

    key: str = Field(min_length=1, max_length=317)
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: list[str] = Field(default_factory=list)
    """Values for In/NotIn; must be empty for Exists/DoesNotExist."""

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(_Model):
    """Which Linux nodes the policy covers (metav1.LabelSelector); empty selects every Linux node."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    """Labels a node must carry with exactly these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)
    """Set-based requirements, all of which must hold."""


class ExcludeSpec(_Model):
    """Processes whose executions are never audited (rendered as `-a never,exit` rules placed first)."""

    executables: list[str] = Field(default_factory=list, max_length=64)
    """Absolute paths of executables whose execve is not audited (e.g. a chatty health probe)."""
    aks_noise: bool = False
    """Also exclude nodeaudit's list of executables that fire constantly on AKS nodes with little
    signal (container shims, runc, probe helpers); see `nodeaudit presets`."""

    @field_validator("executables")
    @classmethod
    def _absolute_paths(cls, value: list[str]) -> list[str]:
        for index, path in enumerate(value):
            if not re.fullmatch(r"/[A-Za-z0-9._+@/-]*", path) or "//" in path or path.endswith("/"):
                raise ValueError(f"executables[{index}]: {path!r} is not an absolute path to a file")
            if len(path) > 4095:
                raise ValueError(f"executables[{index}]: longer than PATH_MAX")
        return value


class SyslogSpec(_Model):
    """Forwarding of audit records to syslog through auditd's syslog plugin."""

    enabled: bool = True
    """Turn the syslog plugin on; when false nodeaudit leaves the plugin as it finds it."""
    facility: Literal[SYSLOG_FACILITIES] = "LOG_AUTHPRIV"  # type: ignore[valid-type]
    """Syslog facility of the forwarded records; the monitoring agent must collect it."""
    priority: Literal[SYSLOG_PRIORITIES] = "LOG_INFO"  # type: ignore[valid-type]
    """Syslog level of the forwarded records; the agent must collect this level or below."""
    format: Literal["json", "raw"] = "json"
    """json: nodeaudit's dispatcher (an auditd plugin, python3 on the node) sends one JSON message
    per audit event, tag `nodeaudit`, attributed to its pod and container (docs/kql.md); nodes
    without python3 fall back to raw and say so. raw: audisp-syslog, one key=value message per
    record, tag `audispd`, as before."""


class SecretRef(_Model):
    """A Secret holding Log Analytics workspace credentials (legacy OMS agent only)."""

    name: str = Field(min_length=1, max_length=253)
    """Secret name."""
    namespace: str = Field(default="nodeaudit-system", min_length=1, max_length=63)
    """Secret namespace."""
    workspace_id_key: str = "workspaceId"
    """Key of the workspace id in the Secret."""
    workspace_key_key: str = "workspaceKey"
    """Key of the workspace shared key in the Secret."""


class RemediationSpec(_Model):
    """What to install on a scale set that lacks an agent, when `remediate` is true."""

    extension: Literal["AzureMonitorLinuxAgent", "OmsAgentForLinux"] = "AzureMonitorLinuxAgent"
    """The VMSS extension to install; OmsAgentForLinux is retired and needs workspaceSecretRef."""
    workspace_secret_ref: SecretRef | None = None
    """Workspace id and key for OmsAgentForLinux."""


class MonitoringAgentSpec(_Model):
    """How nodeaudit confirms that each node pool ships syslog to Log Analytics."""

    check: Literal["Auto", "VMSSExtension", "ContainerInsights", "None"] = "Auto"
    """Auto: every path through ARM (the scale sets' agent extensions, the cluster's monitoring
    add-on, the Data Collection Rules associated with the cluster) and True when one ships the
    policy's facility at its level to a workspace; VMSSExtension: read the scale set's extensions
    through ARM; ContainerInsights: the ama-logs DaemonSet covers the node; None: no check."""
    extension_types: list[str] = Field(
        default_factory=lambda: ["OmsAgentForLinux", "AzureMonitorLinuxAgent"], min_length=1
    )
    """Extension types that count as a monitoring agent."""
    data_collection_rule_id: str | None = Field(
        default=None, pattern=r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Insights/dataCollectionRules/[^/]+$"
    )
    """ARM id of the Data Collection Rule whose syslog source must accept the policy's facility."""
    workspace_resource_id: str | None = Field(
        default=None, pattern=r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.OperationalInsights/workspaces/[^/]+$"
    )
    """ARM id of the Log Analytics workspace the records go to: the operator asks it whether each
    node's canary arrived (condition Delivered); with VMSSExtension its legacy syslog data source
    must also accept the facility."""
    workspace_id: str | None = Field(
        default=None, pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )
    """The workspace's customer id (a GUID), instead of workspaceResourceId, for the arrival query."""
    delivery_grace: str = Field(default="15m", pattern=DURATION_PATTERN)
    """How long a canary may take to reach the workspace before its node is named as missing."""
    interval: str = Field(default="1h", pattern=DURATION_PATTERN)
    """How often the check runs (one ARM list call per scale set per interval)."""
    remediate: bool = False
    """Install the agent where it is missing (changes node resources: AKS support discourages it)."""
    remediation: RemediationSpec | None = None
    """What remediation installs."""

    @model_validator(mode="after")
    def _oms_needs_secret(self) -> MonitoringAgentSpec:
        if (
            self.remediate
            and self.remediation is not None
            and self.remediation.extension == "OmsAgentForLinux"
            and self.remediation.workspace_secret_ref is None
        ):
            raise ValueError("remediation.workspaceSecretRef is required to install OmsAgentForLinux")
        return self


class RolloutSpec(_Model):
    """How fast a change reaches the nodes, and when to stop."""

    max_unavailable: int | str = Field(default="25%")
    """Most apply Jobs of this policy running at once: a count or a percentage of matched nodes
    (rounded down, as Kubernetes does, never below 1). New, rebooted and reimaged nodes have their own budget of the same
    size, so a slow update rollout never holds them back."""
    max_failures: int = Field(default=3, ge=0, le=10000)
    """Failed nodes after which the rollout stops (Stalled=True); 0 stops at the first failure."""
    paused: bool = False
    """Create no new Jobs (running ones finish)."""

    @field_validator("max_unavailable")
    @classmethod
    def _count_or_percent(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("must be at least 1")
            return value
        if re.fullmatch(r"[0-9]+", value):
            raise ValueError(f"{value!r}: write a count as a number or a percentage as '25%'")
        if not re.fullmatch(PERCENT_OR_INT_PATTERN, value) or value == "0%":
            raise ValueError(f"{value!r} is not a percentage between 1% and 100%")
        return value


class AuditdSpec(_Model):
    """Kernel audit queue settings, written as control lines before the rules."""

    rate_limit: int | None = Field(default=None, ge=0, le=1_000_000)
    """Messages per second the kernel may emit (`-r`); excess is lost and counted."""
    backlog_limit: int | None = Field(default=None, ge=64, le=1_048_576)
    """Kernel audit backlog buffers (`-b`)."""
    backlog_wait_time: int | None = Field(default=None, ge=0, le=600_000)
    """Ticks a process waits when the backlog is full (`--backlog_wait_time`)."""


class UnsafeSpec(_Model):
    """Rules that can take a node down or lock it; refused unless allowed here."""

    allow_immutable: bool = False
    """Allow `-e 2`: rules locked until reboot (nodeaudit cannot update or remove them)."""
    allow_panic: bool = False
    """Allow `-f 2`: the kernel panics when auditing fails."""
    allow_delete_all: bool = False
    """Allow `-D`: deletes every rule on the node, including other tools' rules."""


_ALLOW_ALL = rules_mod.Unsafe(allow_immutable=True, allow_panic=True, allow_delete_all=True)


class NodeAuditPolicySpec(_Model):
    """What a NodeAuditPolicy asks of the matching nodes."""

    node_selector: LabelSelector = Field(default_factory=LabelSelector)
    """Nodes to configure (Linux nodes only; virtual-kubelet nodes never)."""
    rules: list[str] = Field(default_factory=list, max_length=1024)
    """Audit rules in auditctl syntax, one rule an entry; `-F arch=` is required on syscall rules."""
    presets: list[Literal[tuple(presets_mod.PRESETS)]] = Field(default_factory=list)  # type: ignore[valid-type]
    """Named rule sets shipped with nodeaudit (see `nodeaudit presets`)."""
    volume: Literal["lean", "standard", "forensic"] = "standard"
    """Which record types reach syslog (node-wide: kernel exclude filters): lean keeps SYSCALL and
    EXECVE only (~2.7x fewer bytes per exec); standard drops only EOE and BPRM_FCAPS; forensic
    keeps every record, as the manual procedure did."""
    exclude: ExcludeSpec = Field(default_factory=ExcludeSpec)
    """Executions that are never audited."""
    syslog: SyslogSpec = Field(default_factory=SyslogSpec)
    """Forwarding to syslog for the monitoring agent."""
    monitoring_agent: MonitoringAgentSpec = Field(default_factory=MonitoringAgentSpec)
    """The Azure monitoring-agent check."""
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    """Rollout pacing and stop conditions."""
    verify_interval: str = Field(default="6h", pattern=DURATION_PATTERN)
    """How often a configured node is re-verified (drift detection)."""
    remove_on_delete: bool = True
    """Deleting the policy removes its rules from the nodes."""
    auditd: AuditdSpec = Field(default_factory=AuditdSpec)
    """Kernel audit rate and backlog settings."""
    unsafe: UnsafeSpec = Field(default_factory=UnsafeSpec)
    """Opt-ins for dangerous control rules."""
    redact: list[str] = Field(default_factory=list, max_length=64)
    """Regular expressions (Python syntax) applied on the node to command lines before they leave
    it, with `syslog.format: json`; a match becomes `<redacted>`. They run over the arguments
    joined by spaces, so `--password[= ]\\S+` also catches `--password secret`."""

    @field_validator("redact")
    @classmethod
    def _redact_compiles(cls, value: list[str]) -> list[str]:
        problems = []
        for index, pattern in enumerate(value):
            try:
                re.compile(pattern)
            except re.error as error:
                where = f" at position {error.pos}" if error.pos is not None else ""
                problems.append(f"[{index}]: bad regular expression{where}: {error.msg}")
            else:
                if len(pattern) > 1024:
                    problems.append(f"[{index}]: longer than 1024 characters")
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @field_validator("rules")
    @classmethod
    def _rules_parse(cls, value: list[str]) -> list[str]:
        # Grammar first, with every opt-in granted, so these problems are reported even when
        # another field is wrong; the unsafe opt-ins are checked once the whole spec is known.
        problems = []
        for index, text in enumerate(value):
            try:
                rules_mod.parse_rule(text, unsafe=_ALLOW_ALL)
            except rules_mod.RuleError as error:
                problems.append(f"[{index}]: {error}")
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @model_validator(mode="after")
    def _check_rules(self) -> NodeAuditPolicySpec:
        unsafe = self.unsafe_flags()
        problems = []
        for index, text in enumerate(self.rules):
            try:
                rules_mod.parse_rule(text, unsafe=unsafe)
            except rules_mod.RuleError as error:
                problems.append(f"rules[{index}]: {error}")
        if not self.rules and not self.presets:
            problems.append("rules: no rules and no presets: the policy would audit nothing")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def unsafe_flags(self) -> rules_mod.Unsafe:
        return rules_mod.Unsafe(
            allow_immutable=self.unsafe.allow_immutable,
            allow_panic=self.unsafe.allow_panic,
            allow_delete_all=self.unsafe.allow_delete_all,
        )


class Condition(_Model):
    """metav1.Condition."""

    model_config = ConfigDict(extra="allow")
    type: str
    """Ready, Reconciling, Stalled, Degraded or AgentReady."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = ""
    """CamelCase reason."""
    message: str = ""
    """What a human should know."""
    observed_generation: int | None = None
    """The generation this condition was computed for."""
    last_transition_time: str | None = None
    """When the status last changed."""


class NodeCounts(_Model):
    """How many nodes are in each state."""

    matched: int = 0
    """Linux nodes the selector matches."""
    configured: int = 0
    """Nodes verified with the current bundle."""
    applying: int = 0
    """Nodes with a Job running."""
    failed: int = 0
    """Nodes whose last Job failed."""


class NodeAuditPolicyStatus(_Model):
    """What the operator observed (kstatus conventions)."""

    model_config = ConfigDict(extra="allow")
    observed_generation: int | None = None
    """The metadata.generation the status describes."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Reconciling, Stalled, Degraded, AgentReady."""
    nodes: NodeCounts = Field(default_factory=NodeCounts)
    """Per-state node counts."""
    bundle: str | None = None
    """Hash of the bundle the nodes should run."""
    agent: list[dict[str, Any]] = Field(default_factory=list)
    """Per-scale-set monitoring agent verdicts."""


class ObjectMeta(_Model):
    """The part of metav1.ObjectMeta nodeaudit reads; the rest is kept but not checked."""

    model_config = ConfigDict(extra="allow")
    name: Annotated[str, Field(min_length=1, max_length=POLICY_NAME_MAX, pattern=POLICY_NAME_PATTERN)]
    """Policy name: a DNS-1123 label (it names the node's rules file)."""
    generation: int | None = None
    uid: str | None = None


class NodeAuditPolicy(_Model):
    """The whole object as stored in the API."""

    model_config = ConfigDict(extra="ignore")
    api_version: Literal["nodeaudit.io/v1alpha1"] = "nodeaudit.io/v1alpha1"
    kind: Literal["NodeAuditPolicy"] = "NodeAuditPolicy"
    metadata: ObjectMeta
    spec: NodeAuditPolicySpec
    status: NodeAuditPolicyStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    def expanded_rules(self) -> list[str]:
        """Every rule that lands in the node's rules file, in load order."""
        spec = self.spec
        return presets_mod.expand(
            presets=spec.presets,
            rules=spec.rules,
            volume=spec.volume,
            exclude_executables=spec.exclude.executables,
            aks_noise=spec.exclude.aks_noise,
            rate_limit=spec.auditd.rate_limit,
            backlog_limit=spec.auditd.backlog_limit,
            backlog_wait_time=spec.auditd.backlog_wait_time,
            unsafe=spec.unsafe_flags(),
        )


def _location(loc: tuple[int | str, ...]) -> str:
    """pydantic's loc tuple (aliases, as validated) as the YAML path a user reads: spec.rules[1]."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part.startswith("function-"):
            continue  # union/validator markers pydantic inserts; not a place in the document
        else:
            out += ("." if out else "") + part
    return out


def format_validation_error(error: ValidationError) -> list[str]:
    """pydantic errors as `spec.x.y: message` lines, one problem a line."""
    lines = []
    for item in error.errors(include_url=False):
        where = _location(tuple(item["loc"]))
        message = str(item["msg"])
        message = message.removeprefix("Value error, ")
        for sub in message.split("\n"):
            # Rule problems carry their own `rules[i]:` prefix; put them under the field path.
            if sub.startswith("["):  # an item of the list at `where`
                lines.append(f"{where}{sub}")
            elif sub.startswith("rules["):  # a spec-level check naming its own list item
                lines.append(f"{where}.{sub}" if where else sub)
            else:
                lines.append(f"{where}: {sub}" if where else sub)
    return lines


def parse_policy(obj: Any) -> NodeAuditPolicy:
    """A policy from its dict form, or PolicyError with every problem named by field path."""
    if not isinstance(obj, dict):
        raise PolicyError([f"a policy must be a mapping, not {type(obj).__name__}"])
    if obj.get("kind") not in (None, KIND):
        raise PolicyError([f"kind: expected {KIND}, got {obj.get('kind')!r}"])
    try:
        return NodeAuditPolicy.model_validate(obj)
    except ValidationError as error:
        raise PolicyError(format_validation_error(error)) from None


def policy_display_name(obj: Any, index: int) -> str:
    """How a document is named in messages when it may not even have a valid name."""
    if isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("name"), str) and meta["name"]:
            return str(meta["name"])
    return f"document {index + 1}"


def iter_documents(docs: Iterable[Any]) -> Iterable[tuple[int, Any]]:
    """Non-empty documents of a multi-document YAML stream, with their index."""
    for index, doc in enumerate(docs):
        if doc is not None:
            yield index, doc
