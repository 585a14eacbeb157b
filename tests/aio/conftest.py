"""Fixtures for the asyncio/thread accounting tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import logcontext
from logcontext import _config, _ledger


@pytest.fixture(autouse=True)
def _restore_modes() -> Iterator[None]:
    """Restore clock and step mode through ``configure`` so every ledger re-derives its flags."""
    saved = (_config.config.clock_mode, _config.config.step_mode, _ledger._window_ns)
    yield
    _ledger._window_ns = saved[2]
    logcontext.configure(clock=saved[0], step_mode=saved[1])
