"""What several commands share: the one policy a command works on, as a click error when unusable."""

from __future__ import annotations

import click

from nodeaudit.core import documents
from nodeaudit.core.policy import NodeAuditPolicy


def single_policy(path: str, name: str | None, pick: str = "--policy NAME") -> NodeAuditPolicy:
    """The one policy in `path` (or the one called `name`); a ClickException (exit 1, one message)
    saying what is wrong otherwise."""
    try:
        loaded = documents.single_policy(path, name, pick)
    except documents.LoadError as e:
        raise click.ClickException(str(e)) from None
    assert loaded.policy is not None
    return loaded.policy
