"""Shared pytest configuration. Plugins for the local cluster register here."""

import pytest

pytest_plugins = [
    "tests.localcluster.pytest_plugin",
    "tests.fixtures.conftest_plugin",
    "tests.integration.harness",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long chaos run (`chaos_long`) is deselected unless a `-m` expression names it:
    it takes many minutes, and `-m cluster` alone must not pull it in."""
    if "chaos_long" in (config.getoption("markexpr") or ""):
        return
    drop = [item for item in items if item.get_closest_marker("chaos_long")]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if not item.get_closest_marker("chaos_long")]
