"""The NodeAuditPolicy model: one place that says what a valid policy is.

The CRD schema (crd.py) is generated from these classes and the operator, the CLI and the
renderer all read policies through them, so a field is documented, defaulted and checked once.
The schema rejects what OpenAPI can express (enums, ranges, patterns); the validators here reject
the rest (audit-rule grammar, cross-field rules) with messages that name the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Annotated, Any, Literal

import yaml
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

# Every verification is a privileged Job on every configured node: `verifyInterval: 0s` once meant
# 780 Jobs in 90 s on 6 nodes. The CRD's pattern admits only durations of at least 5 minutes (a
# leading day/hour part of at least 1, a leading minute part of at least 5, or at least 300 s);
# the model checks the same and the rollout planner never re-verifies sooner (rollout.py).
MIN_VERIFY_INTERVAL = timedelta(minutes=5)
_DURATION_PART = r"[0-9]+(\.[0-9]+)?(ms|s|m|h|d)"
VERIFY_INTERVAL_PATTERN = (
    r"^([1-9][0-9]*(\.[0-9]+)?(d|h)|([5-9]|[1-9][0-9]+)(\.[0-9]+)?m|"
    r"(30[0-9]|3[1-9][0-9]|[4-9][0-9]{2}|[1-9][0-9]{3,})(\.[0-9]+)?s)"
    rf"({_DURATION_PART})*$"
)
# metav1 label syntax: a name part of at most 63 characters, an optional DNS-subdomain prefix.
LABEL_NAME_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


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
    """Shared config: camelCase in YAML, snake_case in Python, unknown fields refused.

    strict: no coercion, as the API server's schema validation has none (`maxFailures: "3"` and
    `maxUnavailable: true` are refused there, so the offline check refuses them too)."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        strict=True,
    )


def check_label_key(key: str) -> str:
    """A label key as metav1 validates it (IsQualifiedName): `[prefix/]name`."""
    if not key:
        raise ValueError("label key must not be empty")
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        raise ValueError(f"label key {key!r}: the prefix before '/' must not be empty")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ValueError(
            f"label key {key!r}: prefix {prefix!r} must be a DNS subdomain (lower case, digits, '-', '.'; "
            "at most 253 characters)"
        )
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"label key {key!r}: name {name!r} must be 1-63 characters, letters, digits, '-', '_' or '.', "
            "beginning and ending with a letter or digit"
        )
    return key


def check_label_value(value: str, where: str = "label value") -> str:
    """A label value as metav1 validates it: empty, or at most 63 characters of the name alphabet."""
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        raise ValueError(
            f"{where} {value!r} must be at most 63 characters, letters, digits, '-', '_' or '.', "
            "beginning and ending with a letter or digit (or empty)"
        )
    return value


class LabelSelectorRequirement(_Model):
    """One matchExpressions entry, as in metav1.LabelSelectorRequirement."""

    key: str = Field(min_length=1, max_length=317, json_schema_extra={"pattern": LABEL_KEY_PATTERN})
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: list[str] = Field(
        default_factory=list, json_schema_extra={"items": {"type": "string", "maxLength": 63, "pattern": LABEL_NAME_PATTERN}}
    )
    """Values for In/NotIn; must be empty for Exists/DoesNotExist."""

    @field_validator("key")
    @classmethod
    def _key_is_a_label_key(cls, value: str) -> str:
        return check_label_key(value)

    @field_validator("values")
    @classmethod
    def _values_are_label_values(cls, value: list[str]) -> list[str]:
        for index, item in enumerate(value):
            check_label_value(item, f"values[{index}]")
        return value

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(_Model):
    """Which Linux nodes the policy covers (metav1.LabelSelector); empty selects every Linux node."""

    match_labels: dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra={"additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_NAME_PATTERN}},
    )
    """Labels a node must carry with exactly these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)
    """Set-based requirements, all of which must hold."""

    @field_validator("match_labels")
    @classmethod
    def _labels_are_metav1_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            check_label_key(key)
            check_label_value(item, f"value of {key!r}")
        return value


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

    @field_validator("max_unavailable", mode="before")
    @classmethod
    def _int_or_str(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"must be a count (an integer) or a percentage such as '25%', not {value!r}")
        return value

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
    allow_task_never: bool = False
    """Allow `-a never,task` without fields: no process started afterwards is audited at all, so
    every policy's syscall rules on the node stop matching (audit-userspace's 10-no-audit.rules)."""
    allow_loginuid_immutable: bool = False
    """Allow `--loginuid-immutable`: login uids cannot be changed again until reboot (nodeaudit
    cannot undo it when the policy goes)."""
    allow_audit_off: bool = False
    """Allow `-e 0`: kernel auditing off on the node, for every policy (verification then
    expects enabled 0)."""


_ALLOW_ALL = rules_mod.Unsafe(allow_immutable=True, allow_panic=True, allow_delete_all=True, allow_task_never=True,
                              allow_loginuid_immutable=True, allow_audit_off=True)


class NodeAuditPolicySpec(_Model):
    """What a NodeAuditPolicy asks of the matching nodes."""

    node_selector: LabelSelector = Field(default_factory=LabelSelector)
    """Nodes to configure (Linux nodes only; virtual-kubelet nodes never)."""
    rules: list[str] = Field(default_factory=list, max_length=1024)
    """Audit rules in auditctl syntax, one rule an entry; `-F arch=` is required on syscall rules."""
    presets: list[Literal[tuple(presets_mod.PRESETS)]] = Field(default_factory=list)  # type: ignore[valid-type]
    """Named rule sets shipped with nodeaudit (see `nodeaudit presets`), among them the compliance
    packs stig, pci-dss, ospp and cis (`nodeaudit presets --show NAME`)."""
    containers: bool = False
    """Compliance packs also record container processes: every pack rule limited to logged-in users
    (auid>=1000) gets a twin for processes whose login uid is unset (4294967295), which is every
    process in a pod and every `kubectl exec` session. Costs more records; see docs/cost.md."""
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
    verify_interval: str = Field(default="6h", json_schema_extra={"pattern": VERIFY_INTERVAL_PATTERN})
    """How often a configured node is re-verified (drift detection); at least 5m (every
    verification is a privileged Job on each node)."""
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

    @field_validator("verify_interval")
    @classmethod
    def _verify_interval_at_least_5m(cls, value: str) -> str:
        if parse_duration(value) < MIN_VERIFY_INTERVAL or not re.fullmatch(VERIFY_INTERVAL_PATTERN, value):
            raise ValueError(
                f"{value!r} must be a duration of at least 5m written from its largest unit (e.g. 5m, 30m, 6h, "
                "1h30m, 1d): every verification is a privileged Job on each node"
            )
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
            allow_task_never=self.unsafe.allow_task_never,
            allow_loginuid_immutable=self.unsafe.allow_loginuid_immutable,
            allow_audit_off=self.unsafe.allow_audit_off,
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
            containers=spec.containers,
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
        if str(item["type"]).endswith("_type") and "input" in item:
            # strict types: say what was found, e.g. maxFailures: "3" (a string, quoted in YAML)
            message += f", not {type(item['input']).__name__} {item['input']!r}"
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


# ------------------------------------------------------------------------------------------------
# Warnings: valid policies that quietly change what other policies (or the node) record. They are
# printed by `nodeaudit validate` (exit 0 unless --strict) and become a condition and an Event in
# the cluster. Each warning is one line that names its place, like a problem.

_AUDITD_CONTROL = {
    "-b": ("backlog_limit", "backlogLimit"),
    "-r": ("rate_limit", "rateLimit"),
    "--backlog_wait_time": ("backlog_wait_time", "backlogWaitTime"),
}


def _drops_syscall_records(rule: rules_mod.AuditRule) -> bool:
    """An exclude rule that drops SYSCALL records (msgtype=SYSCALL, or != another type)."""
    if rule.list != "exclude" or rule.action != "always":
        return False
    msgtypes = [f for f in rule.fields if f.name == "msgtype"]
    if not msgtypes:
        return False
    return all(
        (f.op == "=" and f.value in ("SYSCALL", "1300")) or (f.op == "!=" and f.value not in ("SYSCALL", "1300"))
        for f in msgtypes
    )


def policy_warnings(policy: NodeAuditPolicy) -> list[str]:
    """What in this policy reaches beyond it: node-wide settings and rules that mute others."""
    spec = policy.spec
    unsafe = spec.unsafe_flags()
    warnings = []
    for index, text in enumerate(spec.rules):
        rule = rules_mod.parse_rule(text, unsafe=unsafe)
        where = f"spec.rules[{index}]"
        if rule.option in _AUDITD_CONTROL:
            attr, field = _AUDITD_CONTROL[rule.option]
            chosen = getattr(spec.auditd, attr)
            if chosen is None:
                warnings.append(
                    f"{where}: `{rule.text}` is node-wide and every rules file (other policies', the distro's) "
                    f"may set it, the last one loaded winning; set spec.auditd.{field} instead (applied after "
                    "every rules file)"
                )
            elif chosen != rule.value:
                warnings.append(
                    f"{where}: `{rule.text}` contradicts spec.auditd.{field}: {chosen}; spec.auditd wins "
                    "(applied after the rules files), so this line has no lasting effect"
                )
            else:
                warnings.append(f"{where}: `{rule.text}` repeats spec.auditd.{field}; drop it from rules")
        elif rule.list == "exit" and rule.action == "never":
            warnings.append(
                f"{where}: `{rule.text}` applies to the whole node: the kernel stops at the first matching exit "
                "rule across every rules file, so it also silences other policies' rules for these events"
            )
        elif _drops_syscall_records(rule):
            warnings.append(
                f"{where}: `{rule.text}` drops every SYSCALL record on the node: no syscall rule of any "
                "policy reports anything"
            )
        elif rule.list == "task" and rule.action == "never" and not rule.fields:
            warnings.append(
                f"{where}: `{rule.text}`: processes started from now on are not audited at all, for every policy"
            )
        elif rule.option == "-e" and rule.value == 0:
            warnings.append(f"{where}: `-e 0` switches kernel auditing off on the node, for every policy")
    return warnings


def _muting_rules(policy: NodeAuditPolicy) -> list[tuple[str, rules_mod.AuditRule]]:
    """(where, rule) for every rule of `policy` that silences or drops records node-wide."""
    out: list[tuple[str, rules_mod.AuditRule]] = []
    unsafe = policy.spec.unsafe_flags()
    user = set()
    for index, text in enumerate(policy.spec.rules):
        rule = rules_mod.parse_rule(text, unsafe=unsafe)
        user.add(rule.text)
        if (rule.list == "exit" and rule.action == "never") or _drops_syscall_records(rule) or (
            rule.list == "task" and rule.action == "never" and not rule.fields
        ):
            out.append((f"spec.rules[{index}]", rule))
    for text in presets_mod.exclusion_rules(policy.spec.exclude.executables):
        out.append(("spec.exclude.executables", rules_mod.parse_rule(text)))
    return out


def selectors_may_overlap(a: LabelSelector, b: LabelSelector) -> bool:
    """False only when no node can match both (a matchLabels key with two different values)."""
    return all(b.match_labels.get(key, value) == value for key, value in a.match_labels.items())


def cross_policy_warnings(
    policies: Iterable[NodeAuditPolicy], shared_nodes: Callable[[str, str], bool] | None = None
) -> dict[str, list[str]]:
    """Warnings for the policies that suffer another policy's muting rules, by policy name.

    Rules files load in name order (60-nodeaudit-<policy>.rules), the kernel's exit list keeps load
    order (an -A rule goes to the front) and stops at the first match: a never rule mutes the
    policies loaded after it, and an exclude of SYSCALL or `-a never,task` mutes every policy.
    `shared_nodes(a, b)` says whether two policies select a common node (the operator knows the
    nodes); without it, selectors decide whether they may."""
    chosen = sorted(policies, key=lambda p: p.name)
    out: dict[str, list[str]] = {p.name: [] for p in chosen}
    for source in chosen:
        muting = _muting_rules(source)
        if not muting:
            continue
        for victim in chosen:
            if victim.name == source.name:
                continue
            if shared_nodes is not None:
                if not shared_nodes(source.name, victim.name):
                    continue
            elif not selectors_may_overlap(source.spec.node_selector, victim.spec.node_selector):
                continue
            for where, rule in muting:
                node_wide = rule.list != "exit" or rule.prepend
                if not node_wide and rules_file_name(source.name) > rules_file_name(victim.name):
                    continue  # loaded after the victim's rules: they match first
                out[victim.name].append(
                    f"policy {source.name} ({where}: `{rule.text}`) mutes this policy's rules for the events it "
                    "matches on the nodes both select"
                )
    return out


def rules_file_name(policy_name: str) -> str:
    """The one file in /etc/audit/rules.d/ a policy owns (augenrules loads them in name order)."""
    return f"60-nodeaudit-{policy_name}.rules"


def load_yaml_documents(text: str) -> list[Any]:
    """YAML documents, refusing a mapping that repeats a key (YAML would keep the last silently)."""
    return list(yaml.load_all(text, Loader=UniqueKeyLoader))


class UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader with duplicate mapping keys refused; libyaml's parser when present (~10x
    faster than the pure-Python one, same documents)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first on line {seen[key] + 1}); YAML would keep only the last",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]
