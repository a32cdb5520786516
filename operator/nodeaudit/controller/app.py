"""Start the operator: kopf's settings and ``kopf.operator`` with nodeaudit's handlers.

Why here and not in the cli: ``nodeaudit run``, the demo and the tests start the same operator;
they import this module downward instead of each other.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import kopf

from nodeaudit.controller import handlers, lifecycle
from nodeaudit.controller.config import Config

Flag = threading.Event | asyncio.Event


def make_settings(*, server_timeout: float = 300, client_timeout: float = 330,
                  verbose: bool = False) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    lifecycle.configure(settings)
    settings.watching.server_timeout = server_timeout
    settings.watching.client_timeout = client_timeout
    settings.watching.connect_timeout = 30
    settings.watching.inactivity_timeout = client_timeout + 30
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 4
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    return settings


async def operator(config: Config, *, peering: str | None = None, liveness: str | None = None,
                   stop_flag: Flag | None = None, ready_flag: Flag | None = None,
                   settings: kopf.OperatorSettings | None = None) -> None:
    """Run the operator until ``stop_flag`` is set. ``config`` reaches the handlers in kopf's memo."""
    handlers.register_timers(config)  # the other handlers registered at import
    await kopf.operator(
        registry=kopf.get_default_registry(),
        settings=settings or make_settings(),
        memo=kopf.Memo(config=config),
        namespaces=[config.namespace],  # Jobs/Pods in our namespace; Nodes and policies are cluster-scoped
        standalone=peering is None,
        peering_name=peering,
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
