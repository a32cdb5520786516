"""Run the local API server (and the node simulator) in a background thread.

Why: the tests and the benchmark drive the cluster with the synchronous ``kubernetes`` client and
run the operator in its own thread or process; the API server needs its own event loop that
nobody else blocks. ``call()`` runs a function inside that loop, so the store is only ever
touched from one thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import yaml

from nodeaudit.controller.config import DEFAULT_NAMESPACE, Config
from nodeaudit.testing import apiserver

T = TypeVar("T")


class ServerThread:
    """An :class:`apiserver.ApiServer` on 127.0.0.1 served from a daemon thread."""

    def __init__(self, crds: Iterable[dict[str, Any]] = (), port: int | None = None) -> None:
        self._crds = list(crds)
        self._port = port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.server: apiserver.ApiServer | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="nodeaudit-apiserver", daemon=True)
        self._error: BaseException | None = None
        self.kubeconfig_path = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as e:  # noqa: BLE001 - reported to the starting thread
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with apiserver.serving(self._crds, port=self._port) as server:
            self.server = server
            self.url = str(server.servers[0].url).rstrip("/")
            self._ready.set()
            await self._stop.wait()
            server.close_watches()
            await asyncio.sleep(0.05)

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if isinstance(self._error, OSError):  # the port is taken or not ours to bind: say which
            raise OSError(self._error.errno, f"cannot listen on 127.0.0.1:{self._port or 0}: "
                                             f"{self._error.strerror or self._error}")
        if self._error is not None:
            raise RuntimeError("the local API server did not start") from self._error
        fd, self.kubeconfig_path = tempfile.mkstemp(prefix="nodeaudit-kubeconfig-", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(apiserver.kubeconfig(self.url), f)
        return self

    def stop(self) -> None:
        if self._stop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        if self.kubeconfig_path:
            os.unlink(self.kubeconfig_path)
            self.kubeconfig_path = ""

    def call(self, fn: Callable[[], T], timeout: float = 30) -> T:
        """Run ``fn()`` inside the server's loop (the store is single-threaded) and return its result."""
        async def runner() -> T:
            return fn()
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(runner(), self.loop)
        return fut.result(timeout)

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OperatorThread:
    """The real operator (``kopf.operator`` with nodeaudit's handlers) in a background thread.

    It logs in through the kubeconfig in ``$KUBECONFIG`` like ``nodeaudit run`` does. ``stop()``
    asks kopf to exit and waits for it.
    """

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, *, timeout_for_stop: float = 20) -> None:
        self.namespace = namespace
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self._timeout = timeout_for_stop
        self._thread = threading.Thread(target=self._run, name="nodeaudit-operator", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        from nodeaudit.controller import app

        _quiet_thread_signal_warning()
        try:
            settings = app.make_settings(server_timeout=60, client_timeout=90)
            settings.process.ultimate_exiting_timeout = 5
            settings.background.instant_exit_timeout = 0.5
            config = Config.from_env(namespace=self.namespace)
            asyncio.run(app.operator(config, stop_flag=self.stop_flag,
                                         ready_flag=self.ready_flag, settings=settings))
        except BaseException as e:  # noqa: BLE001 - reported to the test
            self.error = e

    def start(self) -> OperatorThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self._thread.join(self._timeout)

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _NotInMainThread(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "running not in the main thread" not in record.getMessage()


def _quiet_thread_signal_warning() -> None:
    """kopf warns "OS signals are ignored: running not in the main thread." whenever it runs in a
    thread: here that is the design (``stop()`` stops it), so the line is only noise."""
    logger = logging.getLogger("kopf._core.reactor.running")
    if not any(isinstance(f, _NotInMainThread) for f in logger.filters):
        logger.addFilter(_NotInMainThread())
