"""PESQ targets for the metric discriminator, computed by CPU worker processes.

PESQ in the training loop is the recipe's known bottleneck (docs/reference.md §2). The pool takes a batch
as soon as the generator has produced it and scores its items in parallel while training goes on;
the loop collects the scores one step later (see effifusion.training.trainer). Each item is its own task, so
a batch of 4 on 2 workers takes about two PESQ calls of latency, not four.

Failures never raise: a failed item (silent reference, too short, crashed worker) scores NaN and
is counted in ``n_failed``. Workers are spawned (no forked CUDA or thread state), import only this
module's dependencies, and run single-threaded.
"""

from __future__ import annotations

import multiprocessing
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from effifusion.core.parallel import single_thread_worker
from effifusion.metrics.pesq import pesq_or_nan

_Item = tuple[Future, int] | float  # (future, executor generation) or an inline score


class PesqResult:
    """Future-like result of one submitted batch: ``result()`` gives the per-item scores [B]."""

    def __init__(self, pool: PesqPool, items: list[_Item], clean: np.ndarray, enhanced: np.ndarray):
        self._pool = pool
        self._items = items
        self._clean = clean
        self._enhanced = enhanced
        self._scores: np.ndarray | None = None

    def done(self) -> bool:
        return self._scores is not None or all(not isinstance(f, tuple) or f[0].done() for f in self._items)

    def result(self) -> np.ndarray:
        """Block until every item is scored; the blocked time is added to the pool's ``wait_s``."""
        if self._scores is None:
            start = time.perf_counter()
            scores = np.empty(len(self._items), dtype=np.float64)
            for i, item in enumerate(self._items):
                if isinstance(item, tuple):
                    item = self._pool._collect(*item, self._clean[i], self._enhanced[i])
                scores[i] = item
            self._pool.wait_s += time.perf_counter() - start
            self._pool.n_items += len(scores)
            self._pool.n_failed += int(np.isnan(scores).sum())
            self._scores = scores
            self._clean = self._enhanced = None  # the arrays were only kept for a crashed worker
        return self._scores.copy()


class PesqPool:
    """Wide-band PESQ of (clean, enhanced) batches on ``workers`` processes (0: computed inline).

    Counters: ``n_items`` scored, ``n_failed`` of them NaN, ``wait_s`` seconds callers spent
    blocked in ``result()`` (the part of PESQ that training did not hide).
    """

    def __init__(self, workers: int, sr: int = 16000):
        if workers < 0:
            raise ValueError(f"PesqPool: workers must be >= 0, got {workers}")
        self.workers = int(workers)
        self.sr = int(sr)
        self.n_items = 0
        self.n_failed = 0
        self.wait_s = 0.0
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0  # bumped on every restart, so stale futures do not restart it again
        if self.workers > 0:
            self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=single_thread_worker)

    def submit(self, clean: np.ndarray, enhanced: np.ndarray) -> PesqResult:
        """Queue a batch [B, N] (or one item [N]) and return at once (inline mode: when scored)."""
        clean = np.atleast_2d(np.asarray(clean, dtype=np.float32))
        enhanced = np.atleast_2d(np.asarray(enhanced, dtype=np.float32))
        if clean.shape != enhanced.shape or clean.ndim != 2:
            raise ValueError(
                f"PesqPool.submit: clean {clean.shape} and enhanced {enhanced.shape} must both be [B, N]"
            )
        items: list[_Item] = []
        for c, e in zip(clean, enhanced):
            items.append(self._submit_item(c, e))
        return PesqResult(self, items, clean, enhanced)

    def _submit_item(self, clean: np.ndarray, enhanced: np.ndarray) -> _Item:
        if self._executor is None:
            return pesq_or_nan(clean, enhanced, self.sr)
        try:
            return self._executor.submit(pesq_or_nan, clean, enhanced, self.sr), self._generation
        except (BrokenProcessPool, RuntimeError) as exc:
            self._restart(exc)
            return pesq_or_nan(clean, enhanced, self.sr)

    def _collect(self, future: Future, generation: int, clean: np.ndarray, enhanced: np.ndarray) -> float:
        try:
            return float(future.result())
        except BaseException as exc:  # noqa: BLE001 - a worker died (OOM kill, segfault) or was cancelled
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if generation == self._generation:  # the first failure of this executor restarts it
                self._restart(exc)
            return pesq_or_nan(clean, enhanced, self.sr)

    def _restart(self, exc: BaseException) -> None:
        if self._executor is None:
            return
        warnings.warn(f"PESQ worker pool failed ({exc!r}); restarting it", RuntimeWarning, stacklevel=3)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._start()
        self._generation += 1

    def close(self) -> None:
        """Stop the workers (pending items are cancelled)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
            self._generation += 1

    def __enter__(self) -> PesqPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
