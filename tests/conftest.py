"""Shared fixtures for every suite, and the suites' markers, given by folder.

A test under ``tests/host/`` is marked ``host``, under ``tests/operator/`` ``operator`` and under
``tests/azure/`` ``azure`` (see the markers in pyproject.toml); every other folder holds unit tests
laid out like the package (``tests/core/`` for ``nodeaudit.core``, ...). ``-m`` selects by these
markers, so the folder a test lives in decides which ``make test-*`` target runs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import REPO

TESTS = Path(__file__).resolve().parent
SUITES = ("host", "operator", "azure")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: the marks must be on the items before `-m` deselects by them.
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if folder in SUITES:
            item.add_marker(folder)


@pytest.fixture
def repo() -> Path:
    return REPO
