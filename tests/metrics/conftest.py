"""Fixtures for the metrics tests: a fresh registry with metrics installed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from logcontext.metrics import Metrics, install_metrics, uninstall_metrics


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    """Metrics installed on a private registry for the test, uninstalled after it."""
    m = install_metrics(registry=CollectorRegistry())
    try:
        yield m
    finally:
        uninstall_metrics()
