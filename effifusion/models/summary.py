"""`effifusion summary`: parameter, sparsity and MAC counts of a generator, as a JSON-able dict.

MACs are counted analytically by walking the model: every conv (standard, depthwise, pointwise,
transposed), every linear layer, the attention projections and the QKᵀ / AV matmuls over the real
sequence lengths (T frames for the time conformer, F' bins for the frequency one). Element-wise
work (norms, activations, sigmoid, atan2, the mask product) is not counted, as usual for MACs.
Zeros left by pruning are counted too: unstructured sparsity does not lower dense-kernel cost.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from effifusion.core.config import load_params
from effifusion.models.effifusion_gan.generator import (
    ConformerBlock, Generator, build_generator, conv_modules, load_generator,
    validate_model_cfg,
)


def _conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv_macs(conv: nn.Module, spatial: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(MACs, output spatial size) of one Conv1d / Conv2d / ConvTranspose2d on an input of ``spatial``."""
    k = conv.kernel_size
    per_position = conv.in_channels * conv.out_channels // conv.groups
    for kd in k:
        per_position *= kd
    if isinstance(conv, nn.ConvTranspose2d):  # every input position is scattered into a k-window
        out = tuple(
            (s - 1) * st - 2 * p + d * (kd - 1) + op + 1
            for s, kd, st, p, d, op in zip(spatial, k, conv.stride, conv.padding, conv.dilation,
                                           conv.output_padding)
        )
        positions = spatial
    else:
        out = tuple(_conv_out(s, kd, st, p, d)
                    for s, kd, st, p, d in zip(spatial, k, conv.stride, conv.padding, conv.dilation))
        positions = out
    n = 1
    for s in positions:
        n *= s
    return per_position * n, out


def _conv_chain_macs(module: nn.Module, spatial: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """MACs of a module's convs taken in registration order, each fed the previous one's output size.

    Holds for every 2-D part of the generator: the dense layers keep the size ("same" padding), the
    encoder's last conv halves F, the decoders' transposed conv restores it, then only 1×1 convs follow.
    """
    total = 0
    for _, conv in conv_modules(module):
        macs, spatial = _conv_macs(conv, spatial)
        total += macs
    return total, spatial


def _conformer_macs(block: ConformerBlock, n_seq: int, length: int) -> dict[str, int]:
    """MACs of one conformer applied to ``n_seq`` sequences of ``length`` tokens."""
    tokens = n_seq * length
    linear = sum(tokens * m.in_features * m.out_features
                 for ffn in (block.ffn1, block.ffn2) for m in ffn.modules() if isinstance(m, nn.Linear))
    mha = block.attention.attn
    dim = mha.embed_dim
    projections = tokens * (3 * dim * dim + dim * dim)  # in_proj (Q, K, V) + out_proj
    matmuls = 2 * n_seq * length * length * dim  # QKᵀ and AV, summed over heads
    conv, _ = _conv_chain_macs(block.conv_module, (length,))
    return {"ffn": linear, "attention_projections": projections, "attention_matmuls": matmuls,
            "conv_module": conv * n_seq}


def count_macs(model: Generator, n_frames: int) -> dict[str, int]:
    """Analytic MACs of one forward pass on ``n_frames`` STFT frames (batch 1), per component.

    Keys: encoder, tsblocks, mag_decoder, phase_decoder, total; and, already inside tsblocks,
    attention_matmuls (QKᵀ + AV, the part quadratic in length) and attention (matmuls + projections).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    t, f = n_frames, model.n_bins
    encoder, (_, f_enc) = _conv_chain_macs(model.encoder, (t, f))
    ts_total = attention_matmuls = attention = 0
    for block in model.tsblocks:
        time_part = _conformer_macs(block.time_conformer, f_enc, t)  # F' sequences of T frames
        freq_part = _conformer_macs(block.freq_conformer, t, f_enc)  # T sequences of F' bins
        for part in (time_part, freq_part):
            ts_total += sum(part.values())
            attention_matmuls += part["attention_matmuls"]
            attention += part["attention_matmuls"] + part["attention_projections"]
    mag, _ = _conv_chain_macs(model.mag_decoder, (t, f_enc))
    pha, _ = _conv_chain_macs(model.phase_decoder, (t, f_enc))
    return {
        "encoder": encoder, "tsblocks": ts_total, "mag_decoder": mag, "phase_decoder": pha,
        "total": encoder + ts_total + mag + pha,
        "attention_matmuls": attention_matmuls, "attention": attention,
    }


def frames_for(seconds: float, sample_rate: int, hop_length: int) -> int:
    """STFT frames of a centred transform of ``seconds`` of audio."""
    return 1 + int(round(seconds * sample_rate)) // hop_length


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """Dense and non-zero parameter counts, overall and over conv weights, plus per-conv-layer sparsity."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    per_layer: dict[str, float] = {}
    conv_total = conv_nonzero = 0
    for name, conv in conv_modules(model):
        w = conv.weight
        nz = int((w != 0).sum())
        conv_total += w.numel()
        conv_nonzero += nz
        per_layer[name] = round(1.0 - nz / w.numel(), 6)
    return {
        "params_total": total,
        "params_nonzero": nonzero,
        "sparsity": round(1.0 - nonzero / total, 6) if total else 0.0,
        "conv_weights_total": conv_total,
        "conv_weights_nonzero": conv_nonzero,
        "conv_sparsity": round(1.0 - conv_nonzero / conv_total, 6) if conv_total else 0.0,
        "sparsity_per_conv_layer": per_layer,
    }


def summarize(params_path: str = "params.yaml", checkpoint: str | None = None) -> dict[str, Any]:
    """JSON-able summary of the generator described by params.yaml, or of a trained checkpoint.

    MACs are for 1 s of audio (``gmac_per_second``, with the per-component breakdown) and, since
    attention grows quadratically with length, also per second of a 10 s input.
    """
    if checkpoint is not None:
        model, meta = load_generator(checkpoint)
        model_cfg, audio_cfg = meta["model_cfg"], meta["audio_cfg"]
        source = str(checkpoint)
    else:
        params = load_params(params_path)
        model_cfg, audio_cfg = validate_model_cfg(params.get("model"), params.get("audio"))
        model = build_generator(model_cfg, audio_cfg)
        source = str(params_path)
    sr, hop = audio_cfg["sample_rate"], audio_cfg["hop_length"]
    one_s = count_macs(model, frames_for(1.0, sr, hop))
    ten_s = count_macs(model, frames_for(10.0, sr, hop))
    return {
        "source": source,
        **parameter_counts(model),
        "gmac_per_second": round(one_s["total"] / 1e9, 4),
        "gmac_per_second_10s_input": round(ten_s["total"] / 10 / 1e9, 4),
        "macs_1s": one_s,
        "model_cfg": dict(model_cfg),
        "audio_cfg": {k: audio_cfg[k] for k in ("sample_rate", "n_fft", "hop_length", "win_length",
                                                 "compress_factor")},
    }
