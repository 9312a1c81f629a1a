"""tests/deploy needs `kubectl` (with its built-in kustomize) to render the manifests; without it
every test here skips with that reason."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import kubectl


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if kubectl() is not None:
        return
    skip = pytest.mark.skip(reason="kubectl is not installed: the manifests cannot be rendered")
    for item in items:
        if "tests/deploy/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
