"""The root conftest: registers the shared fixtures (tests/plugin.py), once for every suite."""

pytest_plugins = ["tests.plugin"]
