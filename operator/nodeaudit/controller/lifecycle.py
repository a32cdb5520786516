"""What the kopf handlers do beyond feeding the Controller: settings, start, login, stop, delete.

Why apart from ``handlers.py``: the registrations stay one line each (what kopf calls when), and
what happens then is here, callable without kopf's registry.
"""

from __future__ import annotations

import os
from typing import Any

import kopf

from nodeaudit.controller.config import Config
from nodeaudit.controller.kube import Kube
from nodeaudit.controller.reconciler import FINALIZER, Controller, Waiting
from nodeaudit.core import jobs as jobs_mod


def configure(settings: kopf.OperatorSettings) -> None:
    """Settings the operator needs to be correct, whoever starts it."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="nodeaudit.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="nodeaudit.io", key="last-handled-configuration")
    # Only our Jobs and Pods, filtered by the API server, not in the operator.
    settings.watching.label_selectors["batch", "v1", "jobs"] = jobs_mod.LABEL_POLICY
    settings.watching.label_selectors["", "v1", "pods"] = jobs_mod.LABEL_POLICY
    settings.scanning.disabled = True  # no CRD watching: no cluster-wide CRD RBAC needed


def controller(memo: kopf.Memo) -> Controller:
    ctl: Controller = memo["controller"]
    return ctl


async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo) -> None:
    configure(settings)
    config: Config = memo["config"]  # loaded once, by app.operator's caller
    ctl = Controller(Kube(), config)
    memo["controller"] = ctl
    if memo.get("connection") is not None:
        ctl.kube.configure(memo["connection"])
    ctl.start()


async def cleanup(memo: kopf.Memo) -> None:
    ctl = memo.get("controller")
    if ctl is not None:
        await ctl.stop()


def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    import kubernetes.config.kube_config as kube_config

    # The kubernetes client reads $KUBECONFIG once, at import; honour its current value.
    if os.environ.get("KUBECONFIG"):
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = os.environ["KUBECONFIG"]
    context = os.environ.get(CONTEXT_ENV)  # nodeaudit run --context
    info = kopf.login_via_client(**kwargs) if not context else kubeconfig_connection(None, context)
    if isinstance(info, str):
        raise kopf.LoginError(info)
    if info is not None:
        memo["connection"] = info
        ctl = memo.get("controller")
        if ctl is not None:
            ctl.kube.configure(info)
    return info


CONTEXT_ENV = "NODEAUDIT_KUBE_CONTEXT"


def kubeconfig_connection(path: str | None, context: str | None) -> kopf.ConnectionInfo | str:
    """kopf's connection from a kubeconfig and one of its contexts (kopf's own login reads only the
    current-context), or one line saying why that kubeconfig or context cannot be used."""
    import kubernetes

    config_file = path or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if not os.path.exists(config_file.split(os.pathsep)[0]):
        return f"kubeconfig {config_file}: no such file"
    cfg = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=config_file, context=context, client_configuration=cfg)
    except Exception as e:  # noqa: BLE001 - any reason the kubeconfig is unusable is the message
        where = f"context {context}: " if context else ""
        return f"{where}kubeconfig {config_file}: {' '.join(str(e).split()) or type(e).__name__}"
    scheme, _, token = str((cfg.api_key or {}).get("authorization", "")).partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        username=cfg.username or None, password=cfg.password or None,
        scheme=scheme if token else None, token=token or None,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file,
    )


async def remove_policy(memo: kopf.Memo, body: kopf.Body) -> None:
    """The delete handler: kopf retries it (every ``removal_poll``) until removal is done."""
    ctl = controller(memo)
    try:
        await ctl.remove_policy(body)
    except Waiting as e:
        raise kopf.TemporaryError(str(e), delay=ctl.config.removal_poll) from None
