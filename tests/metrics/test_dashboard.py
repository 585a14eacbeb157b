"""The shipped Grafana dashboard only queries series that install_metrics() exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from logcontext.metrics import install_metrics, uninstall_metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def test_dashboard_series_exist() -> None:
    """Every ``logcontext_*`` series named in a panel is one the exporter can produce."""
    reg = CollectorRegistry()
    install_metrics(registry=reg)
    try:
        text = generate_latest(reg).decode()
    finally:
        uninstall_metrics()
    families = {(f.name, f.type) for f in text_string_to_metric_families(text)}
    series = set()
    for name, typ in families:
        if typ == "counter":
            series.add(name + "_total")
        elif typ == "histogram":
            series |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            series.add(name)
    dash = json.loads(DASHBOARD.read_text())
    used = {
        m
        for panel in dash["panels"]
        for t in panel["targets"]
        for m in re.findall(r"logcontext_\w+", t["expr"])
    }
    assert used and used <= series, sorted(used - series)
