"""Suite-wide fixtures.

Every test starts and ends with no logging context current and runs under
``logcontext.testing.strict()`` (any misuse report fails it) unless marked
``misuse_ok``. The garbage collector is off during a test and run after it,
inside the strict block, so reports from finalisers land in the test that
caused them. Global settings (clock, step mode, misuse policy) are restored.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from logcontext import _config, _misuse
from logcontext.testing import assert_in_sentinel, strict


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "misuse_ok: the test provokes misuse reports on purpose")


@pytest.fixture(autouse=True)
def _logcontext_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    assert_in_sentinel()
    saved = (_config.config.clock_mode, _config.config.step_mode, _config.config.misuse)
    _misuse._reset_for_tests()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if request.node.get_closest_marker("misuse_ok"):
            yield
            gc.collect()
        else:
            with strict():
                yield
                gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
        clock_mode, step_mode, misuse = saved
        # Through configure(): a changed mode must bump the clock generation so
        # every ledger picks it up at its next checkpoint.
        _config.configure(clock=clock_mode, step_mode=step_mode, misuse=misuse)
    assert_in_sentinel()


# PostgreSQL session fixture ``pg_dsn`` (throwaway cluster; see tests/_pg.py).
from _pg import pg_dsn  # noqa: E402, F401
