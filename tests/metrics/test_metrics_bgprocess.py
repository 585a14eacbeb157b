"""Background-process metrics through the real ``run_as_background_process`` (spec §3, §7)."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from logcontext import current_context, run_as_background_process
from logcontext.metrics import Metrics


def scrape(m: Metrics) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            if s.labels.get("name") == "prune":
                out[(s.name, s.labels["server_name"])] = s.value
    return out


async def test_running_process_reported_per_scrape_and_at_exit(metrics: Metrics) -> None:
    """A running process shows in flight with usage so far; the final update lands at exit."""
    step = asyncio.Event()
    done = asyncio.Event()

    async def prune() -> None:
        current_context().record_db_txn(0.5)
        step.set()
        await done.wait()
        current_context().record_event_fetch(3)

    task = run_as_background_process("prune", prune)
    await step.wait()
    v1 = scrape(metrics)
    assert v1[("logcontext_background_process_start_count_total", "localhost")] == 1
    assert v1[("logcontext_background_process_in_flight_count", "localhost")] == 1
    assert v1[("logcontext_background_process_db_txn_count_total", "localhost")] == 1
    assert v1.get(("logcontext_background_process_evt_db_fetch_count_total", "localhost"), 0) == 0
    done.set()
    await task
    v2 = scrape(metrics)
    assert v2[("logcontext_background_process_evt_db_fetch_count_total", "localhost")] == 3
    assert v2[("logcontext_background_process_db_txn_count_total", "localhost")] == 1
    assert ("logcontext_background_process_in_flight_count", "localhost") not in v2
