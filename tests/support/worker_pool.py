"""Fuzz cases on forked worker processes (tests/support/fuzz.py, metadata_fuzz.py).

A worker is ``target(conn, *args)``: it receives a case index on ``conn`` (None: stop) and sends back
its result. The pool gives each idle worker the next index; a worker that dies (killed for memory, a
crash in C) or stops answering past ``deadline_s`` is replaced, and its case gets the result the
caller makes of that (``died``, ``hung``), so one bad case never stops a run or goes unrecorded.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

R = TypeVar("R")


def run_cases(
    indexes: Iterable[int],
    *,
    jobs: int,
    target: Callable[..., None],
    args_for: Callable[[int], tuple[Any, ...]],
    deadline_s: float,
    died: Callable[[int, int | None, float], R],
    hung: Callable[[int, float], R],
    record: Callable[[R], None],
) -> None:
    """Run every case of ``indexes`` on ``jobs`` workers; ``record`` each result as it comes.
    ``died(index, exit code, seconds)`` and ``hung(index, seconds)`` make the result of a case
    whose worker died or stopped answering; ``args_for(slot)``: a worker's arguments after its
    connection."""
    context = multiprocessing.get_context("fork")
    workers: dict[int, tuple[Any, Connection, int | None, float]] = {}
    pending = iter(indexes)

    def spawn(slot: int) -> None:
        parent, child = context.Pipe()
        proc = context.Process(target=target, args=(child, *args_for(slot)), daemon=True)
        proc.start()
        child.close()
        workers[slot] = (proc, parent, None, 0.0)

    def give(slot: int) -> bool:
        proc, conn, _, _ = workers[slot]
        index = next(pending, None)
        conn.send(index)  # None: nothing left, the worker stops
        workers[slot] = (proc, conn, index, time.monotonic())
        return index is not None

    for slot in range(jobs):
        spawn(slot)
    busy = {slot for slot in range(jobs) if give(slot)}
    while busy:
        conns = {workers[s][1]: s for s in busy}
        for conn in multiprocessing.connection.wait(list(conns), timeout=1.0):
            slot = conns[conn]  # type: ignore[index]
            proc, _, index, since = workers[slot]
            try:
                result = conn.recv()  # type: ignore[union-attr]
            except (EOFError, OSError):  # the worker died (killed for memory, a crash in C)
                proc.join(5)
                result = died(-1 if index is None else index, proc.exitcode, time.monotonic() - since)
                spawn(slot)
            record(result)
            if not give(slot):
                busy.discard(slot)
        now = time.monotonic()
        for slot in list(busy):
            proc, _, index, since = workers[slot]
            if index is not None and now - since > deadline_s:
                proc.kill()
                proc.join(5)
                record(hung(index, now - since))
                spawn(slot)
                if not give(slot):
                    busy.discard(slot)
    for proc, conn, _, _ in workers.values():
        with contextlib.suppress(OSError, BrokenPipeError):
            conn.send(None)
        proc.join(10)
        if proc.is_alive():
            proc.kill()
