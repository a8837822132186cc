"""Fixtures shared by the operator's cluster tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from tests.fixtures.demo_volume import write_demo_volume
from tests.integration.harness import hostpath_claim


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's tiny model and data, written once per module."""
    return write_demo_volume(tmp_path_factory.mktemp("demo-volume"))


@pytest.fixture
def demo_claim(k8s: client.ApiClient, namespace: str, demo_files: Path) -> Path:
    """The `kubetune-demo` claim (hostPath) over the demo files, in the test's namespace."""
    return hostpath_claim(k8s, namespace, "kubetune-demo", demo_files)
