"""nodeaudit's tests, laid out like the package they test (see tests/conftest.py for the suites)."""

from pathlib import Path

#: The repository checkout the tests run in.
REPO = Path(__file__).resolve().parents[1]
