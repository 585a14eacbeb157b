"""pytest plugin: the ``logcontext_strict`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .._misuse import MisuseReport
from . import strict


@pytest.fixture
def logcontext_strict() -> Iterator[list[MisuseReport]]:
    """Run the test under :func:`logcontext.testing.strict`; yields the recorded reports."""
    with strict() as recorded:
        yield recorded
