"""Clock modes (spec §2.2): what "CPU" means for a context.

=========  ==============================  =========================================
mode       source                          charged into
=========  ==============================  =========================================
``cpu``    ``time.thread_time_ns()``       ``ru_utime`` (user + system)
``rusage`` ``getrusage(RUSAGE_THREAD)``    ``ru_utime`` / ``ru_stime`` (≈ 4 ms ticks)
``wall``   ``time.perf_counter_ns()``      ``ru_utime`` (time the thread ran it)
``off``    nothing                         nothing; no clock call at all
=========  ==============================  =========================================

:func:`read` returns a :data:`ClockReading` ``(user_ns, system_ns)`` or
``None`` when the clock is ``off``. Tests substitute a :class:`FakeClock` with
:func:`use_clock`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ._config import config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Literal, TypeAlias

    from ._config import ClockModeName

    ClockMode: TypeAlias = Literal["cpu", "rusage", "wall", "off"]
    Reader: TypeAlias = Callable[[], "ClockReading | None"]
else:
    #: At run time a plain alias: importing :mod:`typing` would double the import cost.
    ClockMode = str

__all__ = ["ClockMode", "ClockReading", "FakeClock", "mode", "read", "use_clock"]

ClockReading = tuple[int, int]
"""``(user_ns, system_ns)``; the system part is 0 outside ``rusage`` mode."""


_thread_time_ns: Final = time.thread_time_ns
_perf_counter_ns: Final = time.perf_counter_ns


def _read_cpu() -> ClockReading:
    return (_thread_time_ns(), 0)


def _read_wall() -> ClockReading:
    return (_perf_counter_ns(), 0)


def _read_off() -> None:
    return None


def _make_rusage_reader() -> Reader | None:
    try:
        import resource

        who = resource.RUSAGE_THREAD
    except (ImportError, AttributeError):
        return None
    getrusage = resource.getrusage

    def _read_rusage() -> ClockReading:
        ru = getrusage(who)
        return (int(ru.ru_utime * 1e9), int(ru.ru_stime * 1e9))

    return _read_rusage


_rusage_reader: Reader | None = _make_rusage_reader() if sys.platform.startswith("linux") else None

#: The reader in force; the ledger calls it directly.
_reader: Reader = _read_cpu
#: Bumped at every mode change; a ledger whose generation differs drops the
#: interval in progress at its next checkpoint instead of charging it.
_generation: int = 0
#: ``True`` unless the mode is ``off``: the fast path skips checkpoints entirely.
_metering: bool = True
_fake: FakeClock | None = None
#: Called after every change of ``_reader``/``_metering`` (the core caches flags).
_listeners: list[Callable[[], None]] = []


def _notify() -> None:
    for fn in _listeners:
        fn()


def _bump_generation() -> None:
    global _generation
    _generation += 1


def _reader_for(name: ClockModeName) -> tuple[Reader, ClockModeName]:
    if name == "cpu":
        return _read_cpu, "cpu"
    if name == "wall":
        return _read_wall, "wall"
    if name == "off":
        return _read_off, "off"
    if _rusage_reader is not None:
        return _rusage_reader, "rusage"
    from ._misuse import report

    report(
        "clock-fallback",
        "clock mode 'rusage' needs getrusage(RUSAGE_THREAD) (Linux); falling back to 'cpu'",
        site="logcontext.clock",
        can_raise=False,
    )
    return _read_cpu, "cpu"


def _set_mode(name: ClockModeName) -> None:
    global _reader, _metering
    reader, effective = _reader_for(name)
    config.clock_mode = effective
    if _fake is None:
        _reader = reader
    _metering = effective != "off"
    _bump_generation()
    _notify()


def read() -> ClockReading | None:
    """Read the clock of the current mode (``None`` when ``off``)."""
    return _reader()


def mode() -> ClockMode:
    """The clock mode in force (after any fallback)."""
    return config.clock_mode


class FakeClock:
    """A scripted clock for tests: it only moves when told to.

    Every :meth:`read` is counted in :attr:`reads`, so tests can assert how
    many clock calls an operation made.

    >>> clock = FakeClock()
    >>> with use_clock(clock):
    ...     clock.advance(ms=5)
    """

    def __init__(self, user_ns: int = 0, system_ns: int = 0) -> None:
        self.user_ns = user_ns
        self.system_ns = system_ns
        self.reads = 0

    def advance(self, ns: int = 0, *, ms: float = 0.0, system_ns: int = 0) -> None:
        """Move the clock forward (negative values simulate a regression)."""
        self.user_ns += ns + int(ms * 1_000_000)
        self.system_ns += system_ns

    def read(self) -> ClockReading:
        self.reads += 1
        return (self.user_ns, self.system_ns)

    __call__ = read


@contextmanager
def use_clock(clock: FakeClock) -> Iterator[FakeClock]:
    """Replace the clock with ``clock`` for the block (tests only).

    Metering is on during the block even if the mode is ``off``; every
    ledger restarts its interval at its next checkpoint, on entry and on exit.
    """
    global _reader, _fake, _metering
    saved = (_reader, _fake, _metering)
    _reader, _fake, _metering = clock.read, clock, True
    _bump_generation()
    _notify()
    try:
        yield clock
    finally:
        _reader, _fake, _metering = saved
        _bump_generation()
        _notify()
