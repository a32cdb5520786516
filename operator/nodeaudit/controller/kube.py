"""The operator's own API reads and writes (Jobs, ConfigMaps, node records, status, events).

Why not kopf's patching: the operator writes to objects other than the one a handler runs for
(thousands of Jobs and Nodes per policy), concurrently and counted. A small aiohttp client with
the credentials kopf's login produced does that without the blocking ``kubernetes`` client.
Every request is one HTTP call; ``writes`` counts them for the benchmark and metrics.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
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
        self._in_cluster = False
        # Credential data (kubeconfig's inline *-data) written to files once, for ssl:
        # data → path, removed at exit.
        self._files: dict[bytes, str] = {}
        self._cred: dict[str, str | None] = {}
        self.writes = 0
        self.reads = 0

    def configure(self, info: Any) -> None:
        """Use a ``kopf.ConnectionInfo`` (from the login handler)."""
        self._info = info
        self._server = str(info.server).rstrip("/")
        self._in_cluster = is_in_cluster_server(self._server)
        headers = {"User-Agent": USER_AGENT}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            raw = f"{info.username}:{info.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        self._headers = headers
        self._cred = {
            "ca": _path(info.ca_path) or self._file(info.ca_data),
            "cert": _path(info.certificate_path) or self._file(info.certificate_data),
            "key": _path(info.private_key_path) or self._file(info.private_key_data),
        }
        if self._server.startswith("https"):
            ctx = ssl.create_default_context(cafile=_path(info.ca_path), cadata=_text(info.ca_data))
            if info.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self._cred["cert"]:
                ctx.load_cert_chain(self._cred["cert"], self._cred["key"])
            self._ssl = ctx
        else:
            self._ssl = None
        self._ready.set()

    def _file(self, value: Any) -> str | None:
        if not value:
            return None
        data = value if isinstance(value, bytes) else str(value).encode()
        if data not in self._files:
            self._files[data] = _tmpfile(data)
        return self._files[data]

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
        # Only towards the in-cluster API server: a KUBECONFIG for another cluster never gets it.
        if self._info is not None and self._in_cluster and os.path.exists(SA_TOKEN_FILE):
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


def _tmpfile(data: bytes) -> str:
    fd, name = tempfile.mkstemp(prefix="nodeaudit-cred-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    atexit.register(_unlink, name)
    return name


def _unlink(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)


def is_in_cluster_server(server: str) -> bool:
    """``server`` is the API server this pod's service account belongs to
    (``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return False
    try:
        url = urllib.parse.urlsplit(server)
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        return False
    wanted = os.environ.get("KUBERNETES_SERVICE_PORT") or "443"
    return (url.hostname or "").lower() == host.strip("[]").lower() and str(port) == wanted


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
