"""Shared fixtures for every suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import REPO


@pytest.fixture
def repo() -> Path:
    return REPO

