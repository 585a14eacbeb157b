"""Fixtures for the web tests: captured log records and a fresh metrics registry."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from _servers import RecordCollector
from prometheus_client import CollectorRegistry

from logcontext.metrics import Metrics, install_metrics, uninstall_metrics


@pytest.fixture
def records() -> Iterator[RecordCollector]:
    """Collect every record logged under ``logcontext`` (DEBUG and up) during the test."""
    h = RecordCollector()
    lg = logging.getLogger("logcontext")
    old = lg.level
    lg.setLevel(logging.DEBUG)
    lg.addHandler(h)
    try:
        yield h
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    """Metrics installed on a private registry for the test, uninstalled after it."""
    m = install_metrics(registry=CollectorRegistry())
    try:
        yield m
    finally:
        uninstall_metrics()
