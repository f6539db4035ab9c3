"""Turn scheduling for continuous batching: a bounded queue, priorities, fairness, one stepping thread.

`narrative.context.ContextEngine` decodes every active turn in one step; this
module decides which turns are active. A turn is submitted with a priority
(higher first: the NPC the player is facing) and a client id; it waits in the
queue until its conversation can take a sequence and fewer than ``max_turns``
turns are active, then joins at the next step. Among waiting turns of equal
priority the client with the fewest active turns goes first, then the one
served least recently, then arrival order (no client can take every slot
while another waits). Prefill chunks are handed out in the same order.

When ``max_queue`` turns already wait, `Scheduler.submit` refuses the next one
at once with `Busy` (``retry_after_ms``: an estimate from the recent turn
durations), so a front end can answer ``busy`` instead of queueing without
bound.

Threads: `submit` may be called from any thread; one stepping thread (started
by `start`, or the caller's in `run_until_idle`) holds ``lock`` (the model's)
for each step, so other users of the model (saving sessions, a reset) run
between steps. ``on_text`` callbacks run on the stepping thread: they must not
block (a callback that waits delays every active turn's next token).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from narrative.context import ActiveTurn, ContextEngine, Tail
from narrative.llm import Generation, ModelError, SamplingParams
from narrative.settings import ContextSettings

log = logging.getLogger(__name__)


class Busy(Exception):
    """The queue is full (``max_queue`` turns wait): try again after ``retry_after_ms``."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


@dataclass(eq=False)
class _Queued:
    turn: ActiveTurn
    future: Future
    priority: int
    client: str
    order: int


class Scheduler:
    """Runs `ContextEngine` turns concurrently.

    Args:
        engine: the context engine (one model).
        lock: held for each step and admission (the model's ``lock``); a fresh one if None.
        settings: ``max_turns`` (0: ``n_seq_max``), ``max_queue``.
    """

    def __init__(self, engine: ContextEngine, lock: threading.Lock | None = None, settings: ContextSettings | None = None) -> None:
        s = settings or engine.settings
        self.engine = engine
        self.lock = lock or threading.Lock()
        n_seq = engine.model.n_seq_max
        self.max_turns = min(s.max_turns or n_seq, n_seq)
        self.max_queue = s.max_queue
        self._queue: deque[_Queued] = deque()
        self._running: dict[ActiveTurn, _Queued] = {}
        self._served: dict[str, int] = {}  # client -> admission counter value when last served
        self._counter = itertools.count()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._recent_ms: deque[float] = deque(maxlen=32)  # durations of recent turns (retry hints)

    # ---- submitting ------------------------------------------------------------

    def submit(
        self,
        key: str,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        max_tokens: int,
        boundaries: Iterable[int] = (),
        priority: int = 0,
        client: str = "",
        cancel: threading.Event | None = None,
        on_text: Callable[[str], None] | None = None,
        tail: Tail | None = None,
    ) -> Future:
        """Queue one turn; never blocks. The future gives its `Generation` (``ttft_ms`` counts
        the time queued), or the error `ContextEngine.begin` / the decode raised.

        Raises:
            Busy: ``max_queue`` turns already wait.
        """
        turn = ActiveTurn(key, list(prompt), params, max_tokens, tuple(boundaries), cancel, on_text, tail)
        fut: Future = Future()
        with self._cv:
            if self._stop:
                raise ModelError("the scheduler is stopped")
            if len(self._queue) >= self.max_queue:
                raise Busy(f"{len(self._queue)} turns are waiting (max_queue {self.max_queue})", self.retry_after_ms())
            self._queue.append(_Queued(turn, fut, priority, client, next(self._counter)))
            self._cv.notify_all()
        return fut

    def retry_after_ms(self) -> int:
        """A hint for a refused client: the recent mean turn time x the queue's depth in rounds of ``max_turns``."""
        mean = sum(self._recent_ms) / len(self._recent_ms) if self._recent_ms else 1000.0
        rounds = 1 + len(self._queue) // max(1, self.max_turns)
        return int(max(100.0, mean * rounds))

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    # ---- stepping ----------------------------------------------------------------

    def _pick(self) -> _Queued | None:
        """The next waiting turn to admit: highest priority, then the client with the fewest
        running turns, then the one served least recently, then arrival."""
        per_client: dict[str, int] = {}
        for q in self._running.values():
            per_client[q.client] = per_client.get(q.client, 0) + 1
        best = None
        best_key = None
        busy_keys = set()
        for q in self._queue:
            if q.turn.key in busy_keys:
                continue  # an earlier turn of the same conversation goes first
            busy_keys.add(q.turn.key)
            if not self.engine.can_begin(q.turn.key):
                continue
            k = (-q.priority, per_client.get(q.client, 0), self._served.get(q.client, -1), q.order)
            if best_key is None or k < best_key:
                best, best_key = q, k
        return best

    def _admit(self) -> list[_Queued]:
        """Begin waiting turns while slots are free; returns those that failed to begin."""
        failed = []
        while len(self._running) < self.max_turns:
            with self._cv:
                q = self._pick()
                if q is None:
                    break
                self._queue.remove(q)
            if q.turn.cancel is not None and q.turn.cancel.is_set():
                q.turn.finish, q.turn.phase = "cancelled", "done"
                q.turn.t_end = time.perf_counter()
                failed.append(q)
                continue
            try:
                self.engine.begin(q.turn)
            except Exception as exc:  # noqa: BLE001 - delivered to the caller through its future
                q.turn.error = exc
                failed.append(q)
                continue
            self._served[q.client] = q.order
            self._running[q.turn] = q
        return failed

    def step_once(self) -> bool:
        """Admit what can start, run one engine step, resolve the futures of finished turns.
        Returns False when there was nothing to do."""
        with self.lock:
            done = self._admit()
            if not self._running:
                finished = []
            else:
                order = {t: (-q.priority, q.order) for t, q in self._running.items()}
                try:
                    finished = self.engine.step(order=lambda t: order.get(t, (0, 0)))
                except Exception as exc:  # noqa: BLE001 - an engine failure ends every running turn
                    log.exception("engine step failed")
                    finished = self.engine.cancel_all(exc)
                    for t in list(self._running):
                        if t not in finished:
                            t.error = exc
                            finished.append(t)
        finished += [t for t in self._running if t.done and t not in finished]  # ended outside a step (ContextEngine.forget)
        for t in finished:
            q = self._running.pop(t, None)
            if q is not None:
                done.append(q)
        for q in done:
            self._resolve(q)
        return bool(done or self._running or self._queue)

    def _resolve(self, q: _Queued) -> None:
        t = q.turn
        if t.error is not None:
            q.future.set_exception(t.error)
            return
        g: Generation = t.generation()
        self._recent_ms.append(g.total_ms)
        q.future.set_result(g)

    def run_until_idle(self) -> None:
        """Step in the calling thread until no turn waits or runs (tests, benchmarks, scripts)."""
        while self._queue or self._running:
            self.step_once()

    # ---- the stepping thread ----------------------------------------------------------

    def start(self) -> None:
        """Start the stepping thread (idempotent)."""
        with self._cv:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="narrative-steps", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._queue and not self._running:
                    self._cv.wait()
                if self._stop:
                    return
            try:
                self.step_once()
            except Exception:  # noqa: BLE001 - keep the loop alive; step_once already failed the turns
                log.exception("scheduler step failed")
                time.sleep(0.05)

    def close(self) -> None:
        """Stop the thread; waiting and running turns end with an error."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
            waiting = list(self._queue)
            self._queue.clear()
        if self._thread is not None:
            self._thread.join(timeout=30)
        exc = ModelError("the scheduler stopped")
        with self.lock:
            for t in self.engine.cancel_all(exc):
                q = self._running.pop(t, None)
                if q is not None:
                    waiting.append(q)
        for q in waiting:
            if not q.future.done():
                q.future.set_exception(exc)


__all__ = ["Busy", "Scheduler"]
