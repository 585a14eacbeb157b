"""The one path every misuse diagnostic takes (spec §1.6).

``report()`` counts the report, then applies the policy: ``warn`` logs it on
``logcontext.misuse`` once per (kind, context) or (kind, site) and at most 20
lines per kind per minute; ``raise`` raises :class:`LogContextError` (callers
restore state first); ``ignore`` only counts. ``logcontext.testing.strict``
records reports so a test fails on any of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ._config import config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


__all__ = ["KINDS", "LogContextError", "MisuseReport", "counts", "report", "set_misuse_hook"]

KINDS = frozenset(
    {
        "exit-mismatch",
        "foreign-exit",
        "double-exit",
        "reenter-active",
        "restart-finished",
        "late-usage",
        "sentinel-usage",
        "start-while-charged",
        "stop-not-charged",
        "fn-changed-context",
        "unmetered-task",
        "clock-fallback",
        "label-cardinality",
        "leak",
    }
)

RATE_LIMIT = 20
RATE_WINDOW_S = 60.0
_SITE_MEMORY = 10_000

logger = logging.getLogger("logcontext.misuse")


class LogContextError(RuntimeError):
    """Raised at the site of a misuse under the ``raise`` policy (state already restored)."""

    def __init__(self, report: MisuseReport) -> None:
        super().__init__(report.message)
        self.report = report


class MisuseReport:
    """One diagnostic: what went wrong, in which context, where (immutable)."""

    __slots__ = ("context", "kind", "level", "message", "site")

    kind: str
    message: str
    context: str | None
    site: str | None
    level: int

    def __init__(self, kind: str, message: str, context: str | None, site: str | None, level: int) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "kind", kind)
        setattr_(self, "message", message)
        setattr_(self, "context", context)
        setattr_(self, "site", site)
        setattr_(self, "level", level)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"MisuseReport is immutable: cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MisuseReport):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[str, str, str | None, str | None, int]:
        return (self.kind, self.message, self.context, self.site, self.level)

    def __repr__(self) -> str:
        return (
            f"MisuseReport(kind={self.kind!r}, message={self.message!r}, context={self.context!r}, "
            f"site={self.site!r}, level={self.level!r})"
        )


#: Reports per kind since start-up (all policies); the metrics exporter reads it.
counts: dict[str, int] = dict.fromkeys(sorted(KINDS), 0)

_hook: Callable[[MisuseReport], None] | None = None
_lock = threading.Lock()
_seen_sites: set[tuple[str, str]] = set()
_window: dict[str, list[float]] = {}  # kind -> [window start, lines, suppressed]
#: Active ``strict()`` recorders (lists of reports).
_recorders: list[list[MisuseReport]] = []


def set_misuse_hook(fn: Callable[[MisuseReport], None] | None) -> None:
    """Send reports to ``fn`` instead of the ``logcontext.misuse`` logger.

    Deduplication, rate limiting and counting still apply; ``None`` restores
    the logger.
    """
    global _hook
    _hook = fn


def _first_time(kind: str, context: Any, site: str | None) -> bool:
    if context is not None:
        seen = getattr(context, "_reported", None)
        if seen is None:
            try:
                context._reported = seen = set()
            except AttributeError:  # an object without the slot: fall back to the site key
                return _first_site(kind, f"{type(context).__name__}:{context}")
        if kind in seen:
            return False
        seen.add(kind)
        return True
    if site is not None:
        return _first_site(kind, site)
    return True


def _first_site(kind: str, site: str) -> bool:
    key = (kind, site)
    with _lock:
        if key in _seen_sites:
            return False
        if len(_seen_sites) >= _SITE_MEMORY:
            _seen_sites.clear()
        _seen_sites.add(key)
    return True


def _rate_ok(kind: str) -> tuple[bool, int]:
    """Whether this line may be logged, and how many were suppressed before it."""
    now = time.monotonic()
    with _lock:
        w = _window.get(kind)
        if w is None or now - w[0] >= RATE_WINDOW_S:
            suppressed = int(w[2]) if w is not None else 0
            _window[kind] = [now, 1.0, 0.0]
            return True, suppressed
        if w[1] < RATE_LIMIT:
            w[1] += 1
            return True, 0
        w[2] += 1
        return False, 0


def report(
    kind: str,
    message: str,
    *,
    context: Any = None,
    site: str | None = None,
    level: int = logging.WARNING,
    can_raise: bool = True,
    once: bool = True,
) -> None:
    """Hand a misuse report to the configured policy.

    ``context`` (a context object) keys the once-per-context filter, else
    ``site``; ``can_raise=False`` marks places where raising would be harmful
    (finalisers, metering objects, logging hooks): there the report is only
    recorded for ``strict()``.
    """
    counts[kind] = counts.get(kind, 0) + 1
    policy = config.misuse
    ctx_name = None if context is None else str(context)
    rep = MisuseReport(kind, message, ctx_name, site, level)
    if policy == "ignore":
        return
    if policy == "raise" and can_raise:
        raise LogContextError(rep)
    if once and not _first_time(kind, context, site):
        return
    if _recorders:
        _recorders[-1].append(rep)  # the innermost strict() block owns it
    ok, suppressed = _rate_ok(kind)
    if suppressed and _hook is None:
        logger.warning("%d similar %r reports suppressed", suppressed, kind)
    if not ok:
        return
    if _hook is not None:
        _hook(rep)
        return
    where = f" [context {ctx_name}]" if ctx_name is not None else ""
    at = f" at {site}" if site else ""
    logger.log(level, "%s: %s%s%s", kind, message, where, at)


def _reset_for_tests() -> None:
    """Forget deduplication and rate-limit state (counts are kept)."""
    with _lock:
        _seen_sites.clear()
        _window.clear()
