"""Option types and exit codes shared by every command (the table is docs/cli.md).

Why: click's FloatRange lets ``nan`` through every bound (nan < 0 is false) and accepts ``inf``, so
``--seconds nan`` ran and ``--json`` then printed NaN, which is not JSON.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import click
import yaml

EXIT_OK = 0
EXIT_FAILED = 1  # what was asked is wrong or did not succeed: invalid policy, agent missing, not Ready
EXIT_USAGE = 2  # a bad option, argument or setting (click's own usage errors are 2 as well)
EXIT_INCOMPLETE = 3  # the check could not be completed: permission, throttling, timeout, unreachable
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM


class FiniteFloat(click.ParamType):  # type: ignore[type-arg]
    """A finite float within [min, max] (``min_open``: strictly above min)."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False) -> None:
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and (number < self.min or (self.min_open and number == self.min)):
            self.fail(f"{value} must be {'>' if self.min_open else '>='} {self.min:g}", param, ctx)
        if self.max is not None and number > self.max:
            self.fail(f"{value} must be <= {self.max:g}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"FiniteFloat({self.min}, {self.max})"


# -o/--output of every command that prints data (kubectl's names; text is the human form).
DATA_FORMATS = click.Choice(["text", "json", "yaml"])


def print_data(output: str, data: Any, text: str) -> None:
    """``-o json|yaml`` prints ``data`` (JSON never holds NaN); the text form prints ``text``."""
    if output == "json":
        click.echo(json.dumps(data, indent=2, allow_nan=False))
    elif output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
    else:
        click.echo(text, nl=not text.endswith("\n"))


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def check_namespace(namespace: str, option: str) -> str:
    """A namespace name is a DNS-1123 label of at most 63 characters; else a usage error."""
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        raise click.BadParameter(f'"{namespace}" is not a valid namespace name (a DNS-1123 label: at most '
                                 "63 lower-case letters, digits and '-', starting and ending with a letter "
                                 "or digit)", param_hint=option)
    return namespace
