"""MUSE and IMSE: sizes at the published configuration, the ablation switches, shapes at odd lengths,
the deformable conv against its definition, and MUSE's segment protocol against its inference code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from effifusion.core.errors import ConfigError
from effifusion.dsp.segments import enhance_in_segments, segment_plan
from effifusion.models.imse.model import imse_config
from effifusion.models.muse.blocks import deform_depthwise3x3
from effifusion.models.muse.model import muse_config
from effifusion.models.registry import build_model


def n_params(cfg: dict) -> int:
    return sum(p.numel() for p in build_model(cfg, 16000).parameters())


def demo_config(arch: str = "muse", **kw) -> dict:
    base = muse_config() if arch == "muse" else imse_config()
    return {**base, "channels": 8, "heads": [1, 2, 4], "blocks": [1, 1, 1], "segment_samples": 0, **kw}


@pytest.mark.parametrize("changes, expected", [
    ({}, 513_015),                                                  # MUSE, counted from its public code
    ({"attention": "mala"}, 438_583),                               # MET -> MALA only
    ({"embedding": "idconv"}, 502_051),                             # DE -> IDConv only
    ({"attention": "mala", "embedding": "idconv"}, 427_619),        # both: IMSE's 0.427 M
])
def test_parameter_counts_at_the_published_configuration(changes, expected):
    assert n_params({**muse_config(), **changes}) == expected


def test_imse_preset_is_muse_with_both_swaps():
    assert n_params(imse_config()) == 427_619
    assert build_model(imse_config(), 16000).arch == "imse"


@pytest.mark.parametrize("arch", ["muse", "imse"])
@pytest.mark.parametrize("n", [1, 399, 16037])
def test_any_length_comes_back_with_its_length(arch, n):
    torch.manual_seed(0)
    model = build_model(demo_config(arch), 16000).eval()
    with torch.inference_mode():
        y = model.enhance(torch.randn(2, n) * 0.1)
    assert y.shape == (2, n) and torch.isfinite(y).all()


@pytest.mark.parametrize("frames", [1, 2, 3, 5, 161])
def test_forward_pads_frames_to_a_multiple_of_four_and_crops(frames):
    torch.manual_seed(0)
    model = build_model(demo_config(), 16000)
    mag, pha = torch.rand(1, 256, frames), torch.rand(1, 256, frames) * 6 - 3
    out_mag, out_pha, out_com = model(mag, pha)
    assert out_mag.shape == out_pha.shape == (1, 256, frames) and out_com.shape == (1, 256, frames, 2)
    out_mag.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("changes, message", [
    ({"heads": [1, 2, 3]}, "model.heads"),
    ({"n_fft": 400, "win_length": 400}, "model.n_fft"),  # 201 bins: the U-Net cannot halve them
    ({"attention": "softmax"}, "model.attention"),
    ({"segment_samples": 100}, "model.segment_samples"),
    ({"blocks": [4, 4]}, "model.blocks"),
])
def test_bad_settings_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        build_model({**muse_config(), **changes}, 16000)


def _bilinear(img: np.ndarray, y: float, x: float) -> float:
    """torchvision's deformable-conv sampling: bilinear, 0 outside the map (its definition, written out)."""
    h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return 0.0
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    total = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * img[yy, xx]
    return total


def test_deformable_conv_matches_its_definition_at_every_position_edges_included():
    rng = np.random.default_rng(0)
    b, c, h, w = 1, 2, 4, 5
    x = rng.standard_normal((b, c, h, w)).astype(np.float32)
    offset = rng.uniform(-1, 1, (b, 18, h, w)).astype(np.float32)
    offset[0, :, 0, 0] = -1.0  # taps exactly on and past the border
    weight = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    got = deform_depthwise3x3(torch.from_numpy(x), torch.from_numpy(offset), torch.from_numpy(weight)).numpy()
    want = np.zeros_like(got)
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                for k in range(9):
                    y = i + k // 3 - 1 + offset[0, 2 * k, i, j]
                    xx = j + k % 3 - 1 + offset[0, 2 * k + 1, i, j]
                    want[0, ch, i, j] += weight[ch, 0, k // 3, k % 3] * _bilinear(x[0, ch], y, xx)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _muse_inference_reference(wav: np.ndarray, run, size: int) -> np.ndarray:
    """MUSE's inference.py process_audio_segment (normalisation left out), transcribed loop for loop."""
    n = len(wav)
    if n >= size:
        last = n % size
        if last > 0:
            segments = [wav[i:i + size] for i in range(0, n - last, size)] + [wav[-size:]]
        else:
            segments = [wav[i:i + size] for i in range(0, n, size)]
    else:
        segments, last = [np.pad(wav, (0, size - n))], 0
    out = []
    for i, seg in enumerate(segments):
        y = run(seg)
        if last > 0 and i == len(segments) - 2:
            y = y[:-(size - last)]
        out.append(y)
    return np.concatenate(out)[:n]


@pytest.mark.parametrize("n", [1, 999, 1000, 1001, 2000, 2500, 3999, 4000, 4321])
def test_segment_plan_stitches_as_muse_does(n):
    size = 1000
    wav = np.arange(n, dtype=np.float64) + 1

    def run(seg: np.ndarray) -> np.ndarray:  # depends on position within the segment and on its content
        return seg * 10 + np.arange(seg.shape[-1]) * 1e-3

    want = _muse_inference_reference(wav, run, size)
    got = enhance_in_segments(lambda batch: np.stack([run(s) for s in batch]), wav[None], size,
                              concat=np.concatenate, pad=lambda a, k: np.pad(a, ((0, 0), (0, k))), batch=3)[0]
    np.testing.assert_array_equal(got, want)
    if n >= size:
        plan = segment_plan(n, size)
        assert plan[-1] == (n - size, size) and sum(keep for _, keep in plan) == n


def test_segmented_enhance_uses_one_gain_per_utterance():
    """enhance = stitch(enhance_normalised(segment · g)) / g with one g for the whole utterance (MUSE),
    not one gain per segment."""
    torch.manual_seed(0)
    model = build_model(demo_config(segment_samples=2000), 16000).eval()
    x = torch.randn(1, 5500) * 0.1
    x[:, :2000] *= 10  # a loud first segment: per-segment gains would differ from the utterance's
    g = torch.sqrt(x.shape[-1] / x.pow(2).sum())
    with torch.inference_mode():
        y = model.enhance(x)
        parts = [model.enhance_normalised(x[:, s:s + 2000] * g)[:, :keep] for s, keep in segment_plan(5500, 2000)]
    torch.testing.assert_close(y, torch.cat(parts, dim=-1) / g, atol=2e-5, rtol=1e-3)  # batched vs one by one
