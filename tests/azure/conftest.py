"""Fixtures for the Azure tests: the real SDK clients against the shared local https ARM endpoint
(``arm``, ``token_file`` from tests/plugin.py), on one event loop per test."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeaudit.azure.checker import AgentChecker
from nodeaudit.azure.clients import ArmClients, ArmOptions
from nodeaudit.azure.credential import TokenFileCredential
from nodeaudit.testing.armserver import ArmServer


def fast_options(arm: ArmServer, **kw: object) -> ArmOptions:
    """Short timeouts and backoffs so failure cases take fractions of a second."""
    base: dict[str, object] = dict(
        connection_verify=arm.ca_file, connection_timeout=2.0, read_timeout=2.0, retry_total=2,
        retry_backoff_factor=0.01, retry_backoff_max=0.05, max_retry_after=5.0, deadline=10.0,
        concurrency=8, polling_interval=0.0,
    )
    base.update(kw)
    return ArmOptions(**base)  # type: ignore[arg-type]


@pytest.fixture
def aloop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for a whole test: the SDK clients (aiohttp sessions) belong to one loop."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def arun(aloop: asyncio.AbstractEventLoop):
    return aloop.run_until_complete


@pytest.fixture
def make_checker(arm: ArmServer, token_file: Path, aloop: asyncio.AbstractEventLoop):
    made: list[ArmClients] = []

    def make(ttl: float = 3600.0, clock=None, **opts: object) -> AgentChecker:
        clients = ArmClients(TokenFileCredential(str(token_file)), endpoint=arm.endpoint, logs_endpoint=arm.endpoint,
                             options=fast_options(arm, **opts))
        clients._test_loop = aloop  # type: ignore[attr-defined]
        made.append(clients)
        kw = {"clock": clock} if clock else {}
        return AgentChecker(clients, ttl=ttl, **kw)

    yield make
    for c in made:
        aloop.run_until_complete(c.close())
