"""The async Azure SDK clients, made once per subscription and service, counted and bounded.

Every client gets the same transport settings (``ArmOptions``): the endpoint as ``base_url`` with
credential scope ``<endpoint>/.default``, azure-core's retry policy (Retry-After honoured on
429/503, exponential backoff on 5xx, bounded count) except that a Retry-After longer than
``max_retry_after`` is reported rather than slept through, and a counting policy after the retry
policy, so every HTTP attempt is counted by operation (the benchmark and the metrics read it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from azure.core.pipeline.policies import AsyncRetryPolicy, SansIOHTTPPolicy

from nodeaudit.azure.credential import (
    DEFAULT_LOGS_ENDPOINT,
    ENV_CLUSTER_ID,
    ENV_ENDPOINT,
    ENV_LOGS_ENDPOINT,
    arm_endpoint,
    https_endpoint,
    make_credential,
)


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

    def __init__(self, counter: Counter[str], observe: Callable[[str, int | None], None] | None = None,
                 errors: list[BaseException] | None = None) -> None:
        self.counter = counter
        self.observe = observe
        self.errors = errors  # the last attempt's exception: a deadline names it (connection refused, ...)

    def on_request(self, request: Any) -> None:
        req = request.http_request
        path = req.url.split("?", 1)[0]
        self.counter[f"{req.method} {_operation_of(path)}"] += 1

    # ``observe(operation, status or None)``: the operator's Prometheus counter (nodeaudit.controller.metrics).
    def on_response(self, request: Any, response: Any) -> None:
        if self.observe is not None:
            self.observe(_metric_operation(request.http_request), response.http_response.status_code)

    def on_exception(self, request: Any) -> None:
        error = sys.exc_info()[1]
        if self.errors is not None and error is not None:
            self.errors[:] = [error]
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
        ("/datacollectionruleassociations", "dcr.associations"),
        ("/datacollectionrules/", "dcr"),
        ("/datasources", "workspace.datasources"),
        ("/managedclusters/", "aks.cluster"),
        ("/query", "logs.query"),
    ):
        if marker in p:
            return name
    if re.search(r"/subscriptions/[^/]+/resourcegroups/[^/]+$", p):
        return "resourcegroup"
    return "other"


#: Operations that are reads of ARM (the benchmark's "ARM reads"); ``logs.query`` goes to Log Analytics.
ARM_READS: frozenset[str] = frozenset({
    "GET vmss.extensions", "GET dcr.associations", "GET dcr.association", "GET dcr",
    "GET workspace.datasources", "GET aks.cluster", "GET resourcegroup",
})


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
        logs_endpoint: str | None = None,
        cluster_resource_id: str | None = None,
    ) -> None:
        """``observe(operation, status)`` is called after every HTTP attempt (status None: no response)."""
        self.observe = observe
        self.endpoint = arm_endpoint({ENV_ENDPOINT: endpoint} if endpoint else env)
        env_ = os.environ if env is None else env
        self.cluster_resource_id = cluster_resource_id or (env_.get(ENV_CLUSTER_ID) or "").strip() or None
        self.logs_endpoint = https_endpoint(ENV_LOGS_ENDPOINT, logs_endpoint or env_.get(ENV_LOGS_ENDPOINT), DEFAULT_LOGS_ENDPOINT)
        self.credential = credential if credential is not None else make_credential(env)
        self.options = options or ArmOptions()
        self.requests: Counter[str] = Counter()
        self.last_error: list[BaseException] = []  # the last failed attempt (see _CountingPolicy)
        self._clients: dict[tuple[str, str], Any] = {}
        self._loop: object = None

    @property
    def request_total(self) -> int:
        return sum(self.requests.values())

    @property
    def arm_reads(self) -> int:
        return sum(n for op, n in self.requests.items() if op in ARM_READS)

    @property
    def queries(self) -> int:
        return self.requests.get("POST logs.query", 0)

    def _kwargs(self, endpoint: str | None = None) -> dict[str, Any]:
        o = self.options
        return {
            "base_url": endpoint or self.endpoint,
            "credential_scopes": [f"{endpoint or self.endpoint}/.default"],
            "retry_policy": BoundedRetryPolicy(
                max_retry_after=o.max_retry_after,
                retry_total=o.retry_total,
                retry_backoff_factor=o.retry_backoff_factor,
                retry_backoff_max=o.retry_backoff_max,
            ),
            "per_retry_policies": [_CountingPolicy(self.requests, self.observe, self.last_error)],
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
            if kind == "logs":
                # LogsQueryClient takes ``endpoint`` (not ``base_url``) and derives the token
                # audience from it; no subscription
                from azure.monitor.query.aio import LogsQueryClient

                kw = self._kwargs(self.logs_endpoint)
                kw["endpoint"] = kw.pop("base_url")
                client = LogsQueryClient(self.credential, **kw)
            else:
                if kind == "compute":
                    from azure.mgmt.compute.aio import ComputeManagementClient as cls
                elif kind == "monitor":
                    from azure.mgmt.monitor.aio import MonitorManagementClient as cls  # type: ignore[assignment]
                elif kind == "containerservice":
                    from azure.mgmt.containerservice.aio import ContainerServiceClient as cls  # type: ignore[assignment]
                else:
                    from azure.mgmt.loganalytics.aio import LogAnalyticsManagementClient as cls  # type: ignore[assignment]
                client = cls(self.credential, subscription, **self._kwargs())
            self._clients[key] = client
        return client

    def containerservice(self, subscription: str) -> Any:
        return self._get("containerservice", subscription)

    def logs(self) -> Any:
        """The Log Analytics query client (``NODEAUDIT_LOGS_ENDPOINT``, default https://api.loganalytics.io)."""
        return self._get("logs", "")

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
