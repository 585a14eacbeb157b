"""Test helpers: turn misuse reports into failures, check for leaks.

>>> from logcontext.testing import strict
>>> with strict():
...     pass  # any misuse report in here fails the block

The pytest plugin (``logcontext.testing.pytest_plugin``, registered as an
entry point) provides the ``logcontext_strict`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .. import _misuse
from .._config import config
from .._context import _var_get
from .._misuse import MisuseReport

__all__ = ["MisuseDuringTest", "assert_in_sentinel", "strict"]


class MisuseDuringTest(AssertionError):
    """Raised by :func:`strict` when misuse reports were recorded."""

    def __init__(self, reports: list[MisuseReport]) -> None:
        lines = "\n".join(f"  {r.kind}: {r.message} (context={r.context}, site={r.site})" for r in reports)
        super().__init__(f"{len(reports)} logcontext misuse report(s):\n{lines}")
        self.reports = reports


@contextmanager
def strict(*, foreign_exit: bool = False) -> Iterator[list[MisuseReport]]:
    """Run a block under the ``raise`` policy and fail at exit on recorded reports.

    Reports that could not raise at their site (finalisers, metering objects,
    logging hooks) are recorded and fail the block at exit. ``foreign-exit``
    reports are ignored unless ``foreign_exit=True``.
    """
    recorded: list[MisuseReport] = []
    saved = config.misuse
    config.misuse = "raise"
    _misuse._recorders.append(recorded)
    failed = True
    try:
        yield recorded
        failed = False
    finally:
        config.misuse = saved
        _misuse._recorders.remove(recorded)
    if not failed:
        relevant = [r for r in recorded if foreign_exit or r.kind != "foreign-exit"]
        if relevant:
            raise MisuseDuringTest(relevant)


def assert_in_sentinel() -> None:
    """Fail unless no logging context is current."""
    ctx = _var_get()
    if ctx:
        raise AssertionError(f"expected no current logging context, found {ctx!r}")
