"""The operator's own API reads and writes (Jobs, ConfigMaps, node records, status, events).

Why not kopf's patching: the operator writes to objects other than the one a handler runs for
(thousands of Jobs and Nodes per policy), concurrently and counted. A small aiohttp client with
the credentials kopf's login produced does that without the blocking ``kubernetes`` client.
Every request is one HTTP call; ``writes`` counts them for the benchmark and metrics.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import tempfile
import urllib.parse
from collections.abc import Mapping
from typing import Any

import aiohttp

from nodeaudit import __version__

USER_AGENT = f"nodeaudit/{__version__}"
SA_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")


class Kube:
    """A minimal async Kubernetes client: paths in, JSON out."""

    def __init__(self) -> None:
        self._info: Any = None
        self._ready = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool | None = None
        self._headers: dict[str, str] = {"User-Agent": USER_AGENT}
        self._server = ""
        self.writes = 0
        self.reads = 0

    def configure(self, info: Any) -> None:
        """Use a ``kopf.ConnectionInfo`` (from the login handler)."""
        self._info = info
        self._server = str(info.server).rstrip("/")
        headers = {"User-Agent": USER_AGENT}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            raw = f"{info.username}:{info.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        self._headers = headers
        if self._server.startswith("https"):
            ctx = ssl.create_default_context(cafile=_path(info.ca_path), cadata=_text(info.ca_data))
            if info.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            cert = _path(info.certificate_path) or _tmpfile(info.certificate_data)
            key = _path(info.private_key_path) or _tmpfile(info.private_key_data)
            if cert:
                ctx.load_cert_chain(cert, key)
            self._ssl = ctx
        else:
            self._ssl = None
        self._ready.set()

    def sync_api_client(self) -> Any:
        """A blocking ``kubernetes`` ApiClient with the same credentials (for code that runs in a
        thread, e.g. the ContainerInsights read of kube-system/ama-logs). The caller closes it."""
        import kubernetes

        info = self._info
        cfg = kubernetes.client.Configuration(host=self._server)
        auth = self._auth_headers().get("Authorization")
        if auth:
            cfg.api_key = {"authorization": auth}
        if info is not None and self._server.startswith("https"):
            cfg.verify_ssl = not info.insecure
            cfg.ssl_ca_cert = _path(info.ca_path) or _tmpfile(info.ca_data)
            cfg.cert_file = _path(info.certificate_path) or _tmpfile(info.certificate_data)
            cfg.key_file = _path(info.private_key_path) or _tmpfile(info.private_key_data)
        client = kubernetes.client.ApiClient(cfg)
        client.user_agent = USER_AGENT
        return client

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get_session(self) -> aiohttp.ClientSession:
        await asyncio.wait_for(self._ready.wait(), timeout=120)
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=64, ssl=self._ssl if self._ssl is not None else False)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        return self._session

    def _auth_headers(self) -> dict[str, str]:
        # Bound service-account tokens rotate: re-read the projected file when running in a pod.
        if self._info is not None and os.path.exists(SA_TOKEN_FILE) and os.environ.get("KUBERNETES_SERVICE_HOST"):
            try:
                with open(SA_TOKEN_FILE) as f:
                    return {**self._headers, "Authorization": f"Bearer {f.read().strip()}"}
            except OSError:
                pass
        return self._headers

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Any:
        session = await self._get_session()
        url = self._server + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = dict(self._auth_headers())
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            self.writes += 1
        else:
            self.reads += 1
        async with session.request(method, url, data=data, headers=headers) as rsp:
            text = await rsp.text()
            try:
                payload = json.loads(text) if text else None
            except ValueError:
                payload = text
            if rsp.status >= 400:
                raise ApiError(rsp.status, payload)
            return payload

    # -- conveniences ----------------------------------------------------------------------

    async def create(self, path: str, body: Mapping[str, Any]) -> tuple[bool, Any]:
        """POST; (False, None) when it already exists (409)."""
        try:
            return True, await self.request("POST", path, body=body)
        except ApiError as e:
            if e.status == 409:
                return False, None
            raise

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> Any:
        return await self.request("PATCH", path, body=ops, content_type="application/json-patch+json")

    async def delete(self, path: str) -> bool:
        try:
            await self.request("DELETE", path, body={"propagationPolicy": "Background"})
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return await self.request("GET", path, params=params)


def _path(value: Any) -> str | None:
    return os.fspath(value) if value else None


def _text(value: Any) -> str | None:
    if not value:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _tmpfile(value: Any) -> str | None:
    if not value:
        return None
    fd, name = tempfile.mkstemp(prefix="nodeaudit-cred-")
    with os.fdopen(fd, "wb") as f:
        f.write(value if isinstance(value, bytes) else str(value).encode())
    return name


# Paths --------------------------------------------------------------------------------------

def jobs_path(namespace: str, name: str | None = None) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs" + (f"/{name}" if name else "")


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def configmaps_path(namespace: str, name: str | None = None) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps" + (f"/{name}" if name else "")


def node_path(name: str) -> str:
    return f"/api/v1/nodes/{name}"


def policy_status_path(name: str) -> str:
    return f"/apis/nodeaudit.io/v1alpha1/nodeauditpolicies/{name}/status"


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/events"
