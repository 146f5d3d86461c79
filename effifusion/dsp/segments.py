"""MUSE's inference protocol: an utterance enhanced in fixed-length segments, the last taken from the end.

MUSE (huaidanquede/MUSE-Speech-Enhancement, inference.py) normalises the whole utterance once, cuts
it into segments of ``size`` samples (30,700 for its checkpoint: the training crop length), takes the
last segment from the end of the utterance instead of zero-padding it, enhances each segment on its
own and joins the outputs: sample t < N - size comes from the regular segment holding it, the last
``size`` samples from the tail segment. An utterance shorter than ``size`` is zero-padded to it.

One plan, used by the PyTorch path (``EnhancementModel.enhance``) and the torch-free ONNX path
(inference/backends.py), so both stitch the same way. Works on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

from typing import Any, Callable


def segment_plan(n: int, size: int) -> list[tuple[int, int]]:
    """(start, samples kept from the start of that segment's output) for an utterance of n >= size
    samples: regular segments at 0, size, 2·size, ... below n - size, then the tail at n - size."""
    if n < size:
        raise ValueError(f"segment_plan: {n} samples is shorter than one segment ({size}); pad first")
    tail = n - size
    plan = [(start, min(size, tail - start)) for start in range(0, tail, size)]
    return plan + [(tail, size)]


def enhance_in_segments(run: Callable[[Any], Any], x: Any, size: int, concat: Callable[[list[Any]], Any],
                        pad: Callable[[Any, int], Any], batch: int = 8) -> Any:
    """``run`` (a batch of segments [K, size] -> [K, size]) over the segments of each row of x [B, N];
    returns [B, N]. ``concat(list, axis=-1 / dim=0 semantics)`` and ``pad(x, samples)`` are the
    array library's (see callers); up to ``batch`` segments go through ``run`` at once."""
    n = x.shape[-1]
    if n < size:
        return run(pad(x, size - n))[..., :n]
    plan = segment_plan(n, size)
    rows = []
    for b in range(x.shape[0]):
        pieces = [x[b:b + 1, start:start + size] for start, _ in plan]
        outs = []
        for i in range(0, len(pieces), batch):
            out = run(concat(pieces[i:i + batch], 0))
            outs.extend(out[j:j + 1] for j in range(out.shape[0]))
        rows.append(concat([o[:, :keep] for o, (_, keep) in zip(outs, plan)], -1))
    return concat(rows, 0)
