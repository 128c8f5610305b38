r"""The math reward: 1.0 when a response's last ``\boxed{}`` verifies against the gold answer.

``Verifier.score_batch`` grades in worker processes (``sppo_bench.llm.answers.grade``, i.e.
math-verify's ``parse`` + ``verify``) so that no input can hang or crash training:

* each item gets a wall-clock budget of ``timeout_s`` seconds, enforced by THIS (parent) process;
  a worker still busy at its item's deadline is killed (SIGKILL) and replaced, the item scores 0.0;
* a worker that dies on an item (segfault, out of memory, ``os._exit``) costs that item 0.0 and is
  replaced;
* inside a worker, math-verify's own ``signal.alarm`` timeouts (whole seconds, a third of
  ``timeout_s`` rounded up, per call) end most slow parses gracefully, without a kill.

Workers come from a ``forkserver`` that preloads math-verify, so a replacement starts in
milliseconds and no worker inherits the trainer's threads or CUDA state. Workers are started with
the caller's ``__main__`` module hidden (multiprocessing would otherwise re-run the caller's script
in every worker), so a plain script may call ``score`` at module level, without an
``if __name__ == "__main__":`` guard.

``score(response, gold)`` is the single-item public function: it goes through a module-level
default ``Verifier`` (one worker, 5 s budget; created on first use, closed at exit), so it is
bounded in time from any thread, the main one or not.

``Verifier.stats`` counts, over the verifier's life: ``scored`` (every item handed to it),
``correct``, ``no_box`` (no closed box in the response: nothing to grade), ``parse_failures``
(the gold or the boxed answer parsed to nothing, or math-verify raised), ``timeouts`` (killed at
the deadline or math-verify's own timeout) and ``worker_crashes`` (a worker died mid-item).
"""

from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from sppo_bench.errors import UserError
from sppo_bench.llm.answers import NO_BOX, OK, PARSE_FAILURE, TIMEOUT, grade, last_boxed

__all__ = ["Verifier", "last_boxed", "score"]

STAT_KEYS = ("scored", "correct", "no_box", "parse_failures", "timeouts", "worker_crashes")
_STARTUP_TIMEOUT_S = 120.0  # a worker that cannot start within this is an environment failure


def _worker_main(conn: Connection, call_timeout: int, faults: Mapping[str, str]) -> None:
    """Worker loop: receive ``(response, gold)``, send ``(reward, flag)``; ``None`` stops it.

    ``faults`` maps an exact response text to an injected failure ("crash": the process kills
    itself; "hang": it sleeps past any deadline). Empty outside the verifier's own tests.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn.send("ready")
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        response, gold = item
        fault = faults.get(response) if faults else None
        if fault == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == "hang":
            time.sleep(3600.0)
        conn.send(grade(response, gold, call_timeout))


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    ready: bool = False
    started: float = field(default_factory=time.monotonic)
    item: int | None = None  # index of the item in flight
    deadline: float = math.inf


class Verifier:
    """A pool of ``num_workers`` grading processes with a per-item wall-clock ``timeout_s``.

    Usable as a context manager; ``close()`` stops the workers. Calls are serialized by a lock,
    so one ``Verifier`` may be shared between threads.
    """

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        *,
        _faults: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(num_workers, int) or num_workers < 1:
            raise UserError(f"verifier num_workers is {num_workers!r}; valid: an integer >= 1")
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise UserError(f"verifier timeout_s is {timeout_s!r}; valid: a number of seconds > 0")
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        # math-verify's in-worker alarms take whole seconds; three calls per item share timeout_s.
        self.call_timeout = max(1, math.ceil(self.timeout_s / 3))
        self._faults = dict(_faults or {})
        self._workers: list[_Worker] = []
        self._counts = dict.fromkeys(STAT_KEYS, 0)
        self._lock = threading.Lock()
        self._closed = False

    # ----------------------------------------------------------------- public API
    @property
    def stats(self) -> dict[str, int]:
        """Counters over this verifier's life (see the module docstring); a copy."""
        return dict(self._counts)

    def score_batch(self, responses: Sequence[str], golds: Sequence[str]) -> list[float]:
        """Rewards in {0.0, 1.0}, one per ``(responses[i], golds[i])``; never hangs, never raises
        for any input text. Wall time is at most about ``ceil(n / num_workers) * timeout_s``."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        items = [(str(r), str(g)) for r, g in zip(responses, golds, strict=True)]
        with self._lock:
            if self._closed:
                raise RuntimeError("this Verifier is closed")
            self._ensure_workers()
            return self._run(items)

    def close(self) -> None:
        """Stop every worker (politely, then by SIGKILL after a short wait). Idempotent."""
        with self._lock:
            self._closed = True
            for worker in self._workers:
                try:
                    worker.conn.send(None)
                except (OSError, ValueError):
                    pass
            for worker in self._workers:
                worker.process.join(timeout=1.0)
                self._kill(worker)
            self._workers = []

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_workers", None):
            for worker in self._workers:
                self._kill(worker)

    # ----------------------------------------------------------------- workers
    @staticmethod
    def _context() -> mp.context.BaseContext:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["sppo_bench.llm.answers", "math_verify"])
        return ctx

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = mp.Pipe(duplex=True)
        process = self._context().Process(
            target=_worker_main,
            args=(child_conn, self.call_timeout, self._faults),
            name="sppo-verifier",
            daemon=True,
        )
        with _main_module_hidden():
            process.start()
        child_conn.close()  # the parent's copy: the worker's death then reads as EOF here
        return _Worker(process=process, conn=parent_conn)

    @staticmethod
    def _kill(worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5.0)
        worker.conn.close()

    def _ensure_workers(self) -> None:
        """Top the pool up to ``num_workers`` live processes. Workers that died idle, and workers
        left busy by an interrupted call (Ctrl-C mid-batch), are replaced."""
        alive = []
        for worker in self._workers:
            if worker.process.is_alive() and worker.item is None:
                alive.append(worker)
            else:
                self._kill(worker)
        self._workers = alive
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn())

    def _replace(self, worker: _Worker) -> None:
        self._kill(worker)
        self._workers[self._workers.index(worker)] = self._spawn()

    # ----------------------------------------------------------------- scheduling
    def _run(self, items: list[tuple[str, str]]) -> list[float]:
        rewards = [0.0] * len(items)
        pending = deque(range(len(items)))
        retried: set[int] = set()  # items re-queued once after a worker died while idle
        self._counts["scored"] += len(items)
        while pending or any(w.item is not None for w in self._workers):
            for worker in list(self._workers):
                if not (worker.ready and worker.item is None and pending):
                    continue
                index = pending.popleft()
                try:
                    worker.conn.send(items[index])
                except (OSError, ValueError):  # died between items: not this item's fault
                    self._replace(worker)
                    if index in retried:
                        self._counts["worker_crashes"] += 1
                    else:
                        retried.add(index)
                        pending.appendleft(index)
                    continue
                worker.item, worker.deadline = index, time.monotonic() + self.timeout_s
            self._wait_and_collect(rewards)
        return rewards

    def _wait_and_collect(self, rewards: list[float]) -> None:
        """Wait for the next result, death or deadline, then apply what happened."""
        now = time.monotonic()
        next_deadline = min(
            [w.deadline for w in self._workers if w.item is not None]
            + [w.started + _STARTUP_TIMEOUT_S for w in self._workers if not w.ready],
            default=now + 1.0,
        )
        handles = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
        wait(handles, timeout=max(0.0, next_deadline - now))
        now = time.monotonic()
        for worker in list(self._workers):
            message, dead = self._poll(worker)
            if message == "ready":
                worker.ready = True
            elif message is not None:
                reward, flag = message
                self._record(rewards, worker.item, float(reward), flag)
                worker.item, worker.deadline = None, math.inf
            elif dead:
                if worker.item is not None:
                    self._counts["worker_crashes"] += 1
                    rewards[worker.item] = 0.0
                elif not worker.ready:
                    raise RuntimeError("a verifier worker exited while starting")
                self._replace(worker)
            elif worker.item is not None and now >= worker.deadline:
                self._counts["timeouts"] += 1
                rewards[worker.item] = 0.0
                self._replace(worker)
            elif not worker.ready and now >= worker.started + _STARTUP_TIMEOUT_S:
                raise RuntimeError(f"a verifier worker did not start in {_STARTUP_TIMEOUT_S:.0f} s")

    @staticmethod
    def _poll(worker: _Worker) -> tuple[object | None, bool]:
        """``(message or None, dead)`` for one worker, without blocking."""
        try:
            if worker.conn.poll():
                return worker.conn.recv(), False
        except (EOFError, OSError):
            return None, True
        return None, not worker.process.is_alive()

    def _record(self, rewards: list[float], index: int | None, reward: float, flag: str) -> None:
        if index is None:
            return
        rewards[index] = reward if flag == OK else 0.0
        if flag == OK and reward == 1.0:
            self._counts["correct"] += 1
        elif flag == NO_BOX:
            self._counts["no_box"] += 1
        elif flag == PARSE_FAILURE:
            self._counts["parse_failures"] += 1
        elif flag == TIMEOUT:
            self._counts["timeouts"] += 1


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start processes as if ``__main__`` had no file: a forkserver (and each child it forks)
    imports the parent's main script by path, as ``__mp_main__``, running its module-level code.
    The worker needs nothing from it (its target lives in this module)."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


_DEFAULT: Verifier | None = None
_DEFAULT_LOCK = threading.Lock()


def default_verifier() -> Verifier:
    """The module's shared single-worker ``Verifier`` (5 s per item), created on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Verifier(num_workers=1, timeout_s=5.0)
            atexit.register(_DEFAULT.close)
        return _DEFAULT


def score(response: str, gold: str) -> float:
    r"""1.0 if the LAST ``\boxed{}`` of ``response`` verifies against ``gold`` with math-verify,
    else 0.0 (also when the response has no box). Bounded in time (about 5 s) from any thread:
    grading runs in the default verifier's worker process."""
    return default_verifier().score_batch([response], [gold])[0]
