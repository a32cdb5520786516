"""The ARM endpoint and credential: where the Azure clients talk to, and with which token.

- Endpoint: ``NODEAUDIT_ARM_ENDPOINT`` (default https://management.azure.com), https only: azure-core
  refuses bearer tokens over plain http, so a bad one is said once, up front.
- Credential: ``NODEAUDIT_ARM_TOKEN_FILE`` (a bearer token in a file, re-read when the file changes)
  or ``azure.identity.aio.DefaultAzureCredential`` (workload identity in the cluster). The chain is
  only built when asked for (``make_credential``): nothing here starts it on import.
- No token is ever logged or put into a repr.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

ENV_ENDPOINT = "NODEAUDIT_ARM_ENDPOINT"
ENV_TOKEN_FILE = "NODEAUDIT_ARM_TOKEN_FILE"
DEFAULT_ENDPOINT = "https://management.azure.com"
ENV_LOGS_ENDPOINT = "NODEAUDIT_LOGS_ENDPOINT"
DEFAULT_LOGS_ENDPOINT = "https://api.loganalytics.io"
ENV_CLUSTER_ID = "NODEAUDIT_CLUSTER_RESOURCE_ID"


def https_endpoint(name: str, value: str | None, default: str) -> str:
    """An endpoint setting checked: https only, no trailing /."""
    ep = (value or default).strip().rstrip("/")
    if not ep.startswith("https://"):
        # azure-core refuses bearer tokens over plain http; say so now rather than per request
        raise ValueError(f"{name} must be an https:// URL, got {ep!r}")
    return ep


def arm_endpoint(env: Mapping[str, str] | None = None) -> str:
    """``NODEAUDIT_ARM_ENDPOINT`` of ``env`` (default os.environ), checked: https only, no trailing /."""
    env = os.environ if env is None else env
    return https_endpoint(ENV_ENDPOINT, env.get(ENV_ENDPOINT), DEFAULT_ENDPOINT)


class TokenFileCredential:
    """An async TokenCredential that serves the bearer token held in a file.

    The file is re-read whenever its mtime/size/inode change (a projected or rotated token). The
    token handed to azure-core carries a short ``expires_on`` so the bearer policy asks again on
    every request: asking costs one ``stat``; the file itself is read only when it changed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token: str = ""
        self.reads = 0

    def _current(self) -> str:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._stamp:
                with open(self.path, encoding="utf-8") as f:
                    token = f.read().strip()
                self.reads += 1
                if token.lower().startswith("bearer "):
                    token = token[7:].strip()
                self._token, self._stamp = token, stamp
        except OSError as e:  # missing, a directory, no permission...
            raise ClientAuthenticationError(
                f"cannot read the ARM token file {self.path}: {e.strerror or type(e).__name__}") from None
        except UnicodeDecodeError:
            raise ClientAuthenticationError(f"cannot read the ARM token file {self.path}: not UTF-8 text") from None
        if not self._token:
            raise ClientAuthenticationError(f"the ARM token file {self.path} is empty")
        return self._token

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._current(), int(time.time()) + 1)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> TokenFileCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __repr__(self) -> str:  # never the token
        return f"TokenFileCredential(path={self.path!r})"


#: What to configure when the credential chain yields no token: one sentence, never the chain's dump.
NO_CREDENTIAL = (f"no Azure credential: give the operator a workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, "
                 f"AZURE_FEDERATED_TOKEN_FILE) or set {ENV_TOKEN_FILE}")


def credential_message(e: BaseException) -> str:
    """One line for a credential that gave no token. DefaultAzureCredential's message lists every
    credential it tried, one paragraph each (kilobytes): it becomes NO_CREDENTIAL. The token-file
    credential's own line (which file, what is wrong with it) is kept."""
    raw = str(getattr(e, "message", None) or e).strip()
    unavailable = any(c.__name__ == "CredentialUnavailableError" for c in type(e).__mro__)
    if unavailable or "DefaultAzureCredential" in raw or "\n" in raw:
        return NO_CREDENTIAL
    return " ".join(raw.split())[:200] or type(e).__name__


def make_credential(env: Mapping[str, str] | None = None) -> Any:
    """``NODEAUDIT_ARM_TOKEN_FILE`` -> TokenFileCredential, else DefaultAzureCredential (aio)."""
    env = os.environ if env is None else env
    path = env.get(ENV_TOKEN_FILE)
    if path:
        return TokenFileCredential(path)
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()

