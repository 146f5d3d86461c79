"""Worker processes that share the machine: spawned, one thread each.

Every process pool of the project (prepare, mixing, evaluate, scoring, PESQ targets) uses these:
processes are spawned, not forked (a fork of a process that already ran torch's thread pool can
hang), and each worker runs one thread, so N workers use N cores instead of N x cores.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from typing import Any, Callable

from tqdm import tqdm

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def single_thread_worker() -> None:
    """Pool initialiser: one thread for OpenMP/BLAS, torch (if imported) and numpy's BLAS pool."""
    for var in THREAD_ENV:
        os.environ[var] = "1"
    if "torch" in sys.modules:  # imported with the spawned main module, or by the task
        sys.modules["torch"].set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: numpy's BLAS then keeps its default pool
        return
    threadpool_limits(1)


def spawn_context() -> Any:
    return multiprocessing.get_context("spawn")


def run_parallel(fn: Callable[[Any], Any], items: list, workers: int, desc: str, unit: str) -> list:
    """Map ``fn`` over ``items`` in ``workers`` single-threaded spawned processes (in-process when 1),
    with a progress bar; results in completion order."""
    if workers <= 1 or len(items) <= 1:
        return [fn(it) for it in tqdm(items, desc=desc, unit=unit, dynamic_ncols=True)]
    with spawn_context().Pool(min(workers, len(items)), initializer=single_thread_worker) as pool:
        it = pool.imap_unordered(fn, items, chunksize=max(1, min(8, len(items) // (4 * workers))))
        return list(tqdm(it, total=len(items), desc=desc, unit=unit, dynamic_ncols=True))


def timing_report(workers: int, seconds: float, files: int) -> dict:
    """How long a data stage took: for its metrics file, never inside its DVC output, so that a
    rerun on the same inputs writes the same bytes and leaves later stages up to date."""
    return {"workers": workers, "seconds": round(seconds, 3),
            "files_per_s": round(files / seconds, 2) if seconds > 0 else None}
