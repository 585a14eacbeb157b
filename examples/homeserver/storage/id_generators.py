"""Stream ID generators (replication spec §4.2).

The current token is the highest ID ``t`` such that every ID ``<= t`` handed
out has finished: writes commit out of order, the token never passes a hole.
At start-up the token is the maximum over **every** table that holds the
stream's IDs (an empty stream gives 1, so the first ID is 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

__all__ = [
    "StreamIdGenerator",
    "identity_sql",
    "max_stream_id_txn",
    "param_converter",
    "persist_position_txn",
    "read_position_txn",
]

TRACE_MAP_SIZE = 10_000


def identity_sql(sql: str) -> str:
    """Placeholder converter for SQLite (``?`` stays ``?``)."""
    return sql


def param_converter(db: Any) -> Callable[[str], str]:
    """The converter transaction functions apply to their SQL for ``db``.

    ``logcontext.db.DatabasePool`` cursors (and the fallback pool's) convert
    ``?`` placeholders themselves, so this is the identity unless the pool hands
    out raw driver cursors (``raw_cursors = True``).
    """
    if getattr(db, "raw_cursors", False):
        fn = getattr(getattr(db, "engine", None), "convert_param_style", None)
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    return identity_sql


def max_stream_id_txn(txn: Any, tables: Sequence[tuple[str, str]]) -> int:
    """MAX of every ``(table, column)``; 1 when all are empty."""
    best = 1
    for table, column in tables:
        txn.execute(f"SELECT MAX({column}) FROM {table}")
        row = txn.fetchone()
        if row and row[0] is not None:
            best = max(best, int(row[0]))
    return best


def persist_position_txn(
    txn: Any, q: Callable[[str], str], stream_name: str, instance: str, position: int
) -> None:
    """Upsert ``stream_positions(stream_name, instance)``; never moves it backwards."""
    txn.execute(
        q(
            "INSERT INTO stream_positions (stream_name, instance_name, stream_id) VALUES (?, ?, ?)"
            " ON CONFLICT (stream_name, instance_name) DO UPDATE SET stream_id = excluded.stream_id",
        ),
        (stream_name, instance, position),
    )


def read_position_txn(txn: Any, q: Callable[[str], str], stream_name: str, instance: str) -> int | None:
    """The persisted-up-to position of ``(stream, writer)``, or None."""
    txn.execute(
        q("SELECT stream_id FROM stream_positions WHERE stream_name = ? AND instance_name = ?"),
        (stream_name, instance),
    )
    row = txn.fetchone()
    return None if row is None else int(row[0])


class StreamIdGenerator:
    """Allocates increasing IDs; ``get_current_token()`` never passes an unfinished one.

    Allocation is synchronous and lock-guarded; the async and sync context
    managers mark their IDs finished on exit, normal or exceptional.  The body
    must end its transaction before the block exits.
    """

    def __init__(
        self,
        stream_name: str,
        start: int,
        *,
        instance_name: str = "master",
        tables: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.stream_name = stream_name
        self.instance_name = instance_name
        self.tables = list(tables)
        self._lock = threading.Lock()
        self._last = start
        self._current = start
        self._unfinished: list[int] = []  # heap
        self._finished_early: set[int] = set()
        self._listeners: list[Callable[[int], None]] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._traces: OrderedDict[int, dict[str, str]] = OrderedDict()
        self.trace_capture: Callable[[], dict[str, str] | None] | None = None
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    @classmethod
    async def create(
        cls,
        db: Any,
        stream_name: str,
        tables: Sequence[tuple[str, str]],
        *,
        instance_name: str = "master",
        persist: bool = True,
    ) -> StreamIdGenerator:
        """Start from the maximum over ``tables`` and persist it to ``stream_positions``."""
        start = await db.run_interaction(f"{stream_name}_id_start", max_stream_id_txn, tables)
        gen = cls(stream_name, start, instance_name=instance_name, tables=tables)
        if persist:
            await gen.persist(db)
        return gen

    # -- allocation ------------------------------------------------------------------

    def _allocate(self, n: int) -> list[int]:
        if n < 1:
            raise ValueError(f"get_next_mult needs n >= 1, got {n}")
        with self._lock:
            ids = list(range(self._last + 1, self._last + 1 + n))
            self._last += n
            for i in ids:
                heapq.heappush(self._unfinished, i)
        if self.trace_capture is not None:
            carrier = self.trace_capture()
            if carrier:
                self._record_trace(ids[-1], carrier)
        return ids

    def _finish(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._finished_early.update(ids)
            heap = self._unfinished
            while heap and heap[0] in self._finished_early:
                self._finished_early.discard(heapq.heappop(heap))
            new = heap[0] - 1 if heap else self._last
            advanced = new > self._current
            if advanced:
                self._current = new
        if advanced:
            self._notify(new)

    def _notify(self, token: int) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self._fire(token)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._fire(token)
        else:
            loop.call_soon_threadsafe(self._fire, token)

    def _fire(self, token: int) -> None:
        token = max(token, self._current)
        waiters, self._waiters = self._waiters, []
        for target, fut in waiters:
            if target <= token:
                if not fut.done():
                    fut.set_result(None)
            else:
                self._waiters.append((target, fut))
        for cb in list(self._listeners):
            cb(token)

    @contextlib.asynccontextmanager
    async def get_next(self) -> AsyncIterator[int]:
        """``async with gen.get_next() as sid``: one ID, finished when the block exits."""
        ids = self._allocate(1)
        try:
            yield ids[0]
        finally:
            self._finish(ids)

    @contextlib.asynccontextmanager
    async def get_next_mult(self, n: int) -> AsyncIterator[list[int]]:
        """``async with gen.get_next_mult(n) as sids``: ``n`` consecutive IDs."""
        ids = self._allocate(n)
        try:
            yield ids
        finally:
            self._finish(ids)

    @contextlib.contextmanager
    def get_next_sync(self, n: int = 1) -> Iterator[list[int]]:
        """Plain ``with`` variant for code running in threads; yields a list of IDs."""
        ids = self._allocate(n)
        try:
            yield ids
        finally:
            self._finish(ids)

    # -- reading ---------------------------------------------------------------------

    def get_current_token(self) -> int:
        """Highest ID below which every handed-out ID has finished."""
        return self._current

    def current_token(self, instance: str) -> int:
        """``Stream.current_token`` for the writer: our token for our own name, else 0."""
        return self._current if instance == self.instance_name else 0

    def add_listener(self, cb: Callable[[int], None]) -> None:
        """Call ``cb(token)`` on the loop thread after each advance."""
        self._listeners.append(cb)

    async def wait_for(self, token: int) -> None:
        """Wait until the current token reaches ``token``."""
        if self._current >= token:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((token, fut))
        await fut

    def _record_trace(self, token: int, carrier: dict[str, str]) -> None:
        with self._lock:
            self._traces[token] = carrier
            while len(self._traces) > TRACE_MAP_SIZE:
                self._traces.popitem(last=False)

    def trace_carrier(self, token: int) -> dict[str, str] | None:
        """The trace carrier captured when ``token`` was allocated, if kept."""
        return self._traces.get(token)

    async def persist(self, db: Any) -> int:
        """Upsert ``stream_positions`` with the current token; return it."""
        pos = self._current
        await db.run_interaction(
            f"{self.stream_name}_persist_position",
            persist_position_txn,
            param_converter(db),
            self.stream_name,
            self.instance_name,
            pos,
        )
        return pos
