"""SDK objects -> the small pure facts of ``nodeaudit.core.agent``, and SDK errors -> one-line messages.

Both SDK generations are read (azure-mgmt-compute 37.x msrest models and >= 38 TypeSpec models);
an odd payload gives Nones, never a crash. Error messages never include a token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from azure.core.exceptions import (
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from nodeaudit.azure.credential import ENV_TOKEN_FILE, NO_CREDENTIAL, credential_message
from nodeaudit.core import agent as A


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


def syslog_sources(dcr: Any) -> list[A.SyslogSource]:
    """A DataCollectionRuleResource's ``dataSources.syslog`` items."""
    ds = getattr(dcr, "data_sources", None)
    return [A.SyslogSource(
        name=_s(getattr(s, "name", None)),
        facilities=_strs(getattr(s, "facility_names", None)),
        levels=_strs(getattr(s, "log_levels", None)),
        streams=_strs(getattr(s, "streams", None)),
    ) for s in getattr(ds, "syslog", None) or []]


def dcr_fact(dcr: Any, resource_id: str) -> A.DcrFact:
    """A DataCollectionRuleResource -> DcrFact: its syslog sources and what flows to a workspace."""
    sources = syslog_sources(dcr)
    dests = getattr(dcr, "destinations", None)
    la = [d for d in getattr(dests, "log_analytics", None) or []]
    la_names = {n.lower() for d in la if (n := _s(getattr(d, "name", None)))}
    streams: list[str] = []
    for f in getattr(dcr, "data_flows", None) or []:
        if any(isinstance(x, str) and x.lower() in la_names for x in getattr(f, "destinations", None) or []):
            streams.extend(_strs(getattr(f, "streams", None)))
    return A.DcrFact(
        resource_id=_s(getattr(dcr, "id", None)) or resource_id,
        name=_s(getattr(dcr, "name", None)) or resource_id.rsplit("/", 1)[-1],
        sources=tuple(sources),
        workspace_streams=tuple(streams),
        workspaces=tuple(w for d in la if (w := _s(getattr(d, "workspace_resource_id", None)))),
    )


def cluster_fact(mc: Any, resource_id: str) -> A.ClusterFact:
    """A ManagedCluster -> ClusterFact: is Container Insights on, through which profile, where to.

    ARM reports it in two places: the ``omsagent`` add-on profile (``config``:
    ``logAnalyticsWorkspaceResourceID``, ``useAADAuth``) or ``azureMonitorProfile.containerInsights``.
    """
    props = getattr(mc, "properties", None) or mc  # TypeSpec models flatten properties; read both
    addons = getattr(props, "addon_profiles", None) or {}
    via: str | None = None
    workspace: str | None = None
    msi = False
    for key, profile in (addons.items() if isinstance(addons, Mapping) else []):
        if str(key).lower() != A.CI_ADDON or not getattr(profile, "enabled", False):
            continue
        config = getattr(profile, "config", None) or {}
        via = f"addonProfiles.{key}"
        if isinstance(config, Mapping):
            low = {str(k).lower(): v for k, v in config.items()}
            workspace = _s(low.get("loganalyticsworkspaceresourceid"))
            msi = str(low.get("useaadauth", "")).lower() == "true"
    monitor = getattr(props, "azure_monitor_profile", None)
    ci = getattr(monitor, "container_insights", None)
    if via is None and ci is not None and getattr(ci, "enabled", False):
        via = "azureMonitorProfile.containerInsights"
        workspace = _s(getattr(ci, "log_analytics_workspace_resource_id", None))
        msi = True  # the Azure Monitor profile always uses managed identity
    rid = _s(getattr(mc, "id", None)) or resource_id
    parts = [p for p in rid.split("/") if p]
    low_parts = [p.lower() for p in parts]
    rg = parts[low_parts.index("resourcegroups") + 1] if "resourcegroups" in low_parts else ""
    return A.ClusterFact(resource_id=rid, name=_s(getattr(mc, "name", None)) or parts[-1], resource_group=rg,
                         location=_s(getattr(mc, "location", None)), addon_via=via,
                         workspace_resource_id=workspace, managed_identity=msi)


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


def parse_arm_id_subscription(resource_id: str) -> str:
    """The subscription of any ARM resource id; raises ValueError when it names none."""
    parts = [p for p in resource_id.strip().split("/") if p]
    low = [p.lower() for p in parts]
    if "subscriptions" not in low or low.index("subscriptions") + 1 >= len(parts):
        raise ValueError(f"not an ARM resource id: {resource_id!r}")
    return parts[low.index("subscriptions") + 1]


# -- errors -> verdict messages ---------------------------------------------------------------------


def _arm_code(e: HttpResponseError) -> str:
    err = getattr(e, "error", None)
    code = getattr(err, "code", None)
    return f" ({code})" if isinstance(code, str) and code else ""


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def describe_error(
    e: BaseException, *, what: str, permission: str, scope: str, endpoint: str = "", retry_note: str = "",
    service: str = "ARM",
) -> str:
    """A one-line verdict message for a failed ARM call. Never includes a token.

    ``retry_note`` is appended to the transient failures (timeouts, throttling, 5xx, network): the
    operator passes "; retried next interval", the one-shot CLI nothing.
    """
    at = f" ({endpoint})" if endpoint else ""
    if isinstance(e, asyncio.TimeoutError):
        return f"{what}: no answer within the deadline ({service} slow or unreachable{at}){retry_note}"
    if isinstance(e, DecodeError | DeserializationError):
        return f"{what}: {service} sent a malformed response (not the expected JSON){retry_note}"
    if isinstance(e, ClientAuthenticationError) and getattr(e, "status_code", None) is None:
        # raised by the credential itself, before any request
        message = credential_message(e)
        return f"{what}: {message}" if message == NO_CREDENTIAL else f"{what}: cannot get a token: {message}"
    if isinstance(e, ClientAuthenticationError) and e.status_code == 401:
        return f"{what}: {service} rejected the credential (401): check workload identity / {ENV_TOKEN_FILE}"
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
            return f"{what}: throttled by {service} (429{', Retry-After ' + ra + ' s' if ra else ''}){retry_note}"
        if status is not None and status >= 500:
            return f"{what}: {service} server error {status}{_arm_code(e)} after retries{retry_note}"
        return f"{what}: {service} answered {status}{_arm_code(e)}"
    if isinstance(e, ServiceResponseError | ServiceRequestError):
        return f"{what}: {service} unreachable or too slow{at}: {type(e).__name__}: {_first_line(e)}{retry_note}"
    return f"{what}: unexpected {type(e).__name__}: {_first_line(e)}{at}"
