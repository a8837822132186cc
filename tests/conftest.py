"""Shared pytest configuration. Plugins for the local cluster register here."""

pytest_plugins = [
    "tests.localcluster.pytest_plugin",
    "tests.fixtures.conftest_plugin",
    "tests.integration.harness",
]
