"""MUSE's public checkpoint (``g_best``: a torch pickle whose ``generator`` entry is the state dict of
MUSE's ``MUSE(h)``) loaded into this project's ``Muse``: the same weights under this package's names.

Every one of the 586 tensors is renamed by the rules below and must land on a tensor of the same
shape; anything left over on either side is an error naming it, so a different upstream version
cannot load half-way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from effifusion.core.errors import ConfigError
from effifusion.models.muse.model import Muse, muse_config

_STAGES = {"encoder_level1": "enc1", "encoder_level2": "enc2", "latent": "latent", "decoder_level2": "dec2",
           "decoder_level1": "dec1", "mag_refinement": "mag_refine", "pha_refinement": "pha_refine"}
_EMBEDS = {"patch_embed_encoder_level1": "enc1", "patch_embed_encoder_level2": "enc2",
           "patch_embed_latent": "latent", "patch_embed_decoder_level2": "dec2",
           "patch_embed_decoder_level1": "dec1", "mag_patch_embed_refinement": "mag_refine",
           "pha_patch_embed_refinement": "pha_refine"}

# (pattern, replacement) applied in order to each upstream key
RULES: list[tuple[str, str]] = [
    # dense encoder and both decoders' dense blocks
    (r"^dense_encoder\.", "encoder."),
    (r"\.dense_block\.dense_block\.(\d+)\.0\.", r".dense_block.layers.\1.conv."),
    (r"\.dense_block\.dense_block\.(\d+)\.1\.", r".dense_block.layers.\1.norm."),
    (r"\.dense_block\.dense_block\.(\d+)\.2\.", r".dense_block.layers.\1.act."),
    (r"^encoder\.dense_conv_1\.0\.", "encoder.input_conv."),
    (r"^encoder\.dense_conv_1\.1\.", "encoder.input_norm."),
    (r"^encoder\.dense_conv_1\.2\.", "encoder.input_act."),
    (r"^encoder\.dense_conv_2\.0\.", "encoder.down_conv."),
    (r"^encoder\.dense_conv_2\.1\.", "encoder.down_norm."),
    (r"^encoder\.dense_conv_2\.2\.", "encoder.down_act."),
    (r"^mask_decoder\.mask_conv\.0\.", "mask_decoder.upsample.expand."),
    (r"^mask_decoder\.mask_conv\.2\.", "mask_decoder.upsample.dw."),
    (r"^mask_decoder\.mask_conv\.3\.", "mask_decoder.mask_conv."),
    (r"^mask_decoder\.mask_conv\.4\.", "mask_decoder.mask_norm."),
    (r"^mask_decoder\.mask_conv\.5\.", "mask_decoder.mask_act."),
    (r"^mask_decoder\.mask_conv\.6\.", "mask_decoder.mask_out_conv."),
    (r"^phase_decoder\.phase_conv\.0\.", "phase_decoder.upsample.expand."),
    (r"^phase_decoder\.phase_conv\.2\.", "phase_decoder.upsample.dw."),
    (r"^phase_decoder\.phase_conv\.3\.", "phase_decoder.upsample_norm."),
    (r"^phase_decoder\.phase_conv\.4\.", "phase_decoder.upsample_act."),
    (r"^phase_decoder\.phase_conv_r\.", "phase_decoder.real_conv."),
    (r"^phase_decoder\.phase_conv_i\.", "phase_decoder.imag_conv."),
    # U-Net: embeddings, transformer blocks, fusion, resampling
    (r"^TCFTransformer\.", "unet."),
    (r"^unet\.(\w+)\.patch_embeds\.0\.patch_conv\.", lambda m: f"unet.{_EMBEDS.get(m.group(1), m.group(1))}.embed."),
    (r"\.embed\.offset_generator\.0\.", ".embed.offset_dw."),
    (r"\.embed\.offset_generator\.1\.", ".embed.offset_pw."),
    (r"\.embed\.dcn\.weight$", ".embed.deform_weight"),
    (r"\.embed\.pwconv\.", ".embed.pointwise."),
    (r"^unet\.(\w+)\.mhca_blks\.0\.transformer_layers\.",
     lambda m: f"unet.{_STAGES.get(m.group(1), m.group(1))}.blocks."),
    (r"\.(norm[12])\.body\.weight$", r".\1.weight"),
    (r"\.attn\.sca\.1\.", ".attn.channel_gate."),
    (r"\.attn\.dwconv\.0\.", ".attn.spatial_in."),
    (r"\.attn\.dwconv\.1\.", ".attn.spatial_dw."),
    (r"\.attn\.qkv_dwconv\.", ".attn.qkv_dw."),
    (r"\.attn\.project_out\.", ".attn.proj."),
    (r"\.attn\.refine_att\.conv_list\.", ".attn.compensation."),
    (r"\.ffn\.dwconv\.", ".ffn.dw."),
    (r"^unet\.(\w+)\.aggregate\.conv_du\.0\.", lambda m: f"unet.{_STAGES.get(m.group(1), m.group(1))}.fuse.squeeze."),
    (r"^unet\.(\w+)\.aggregate\.conv_du\.1\.", lambda m: f"unet.{_STAGES.get(m.group(1), m.group(1))}.fuse.act."),
    (r"^unet\.(\w+)\.aggregate\.fcs\.0\.", lambda m: f"unet.{_STAGES.get(m.group(1), m.group(1))}.fuse.excite."),
    (r"^unet\.down1_2\.body\.0\.", "unet.down1.dw."), (r"^unet\.down1_2\.body\.1\.", "unet.down1.pw."),
    (r"^unet\.down2_3\.body\.0\.", "unet.down2.dw."), (r"^unet\.down2_3\.body\.1\.", "unet.down2.pw."),
    (r"^unet\.up3_2\.body\.0\.", "unet.up2.dw."), (r"^unet\.up3_2\.body\.1\.", "unet.up2.pw."),
    (r"^unet\.up2_1\.body\.0\.", "unet.up1.dw."), (r"^unet\.up2_1\.body\.1\.", "unet.up1.pw."),
    (r"^unet\.reduce_chan_level2\.0\.", "unet.reduce2."), (r"^unet\.reduce_chan_level1\.0\.", "unet.reduce1."),
    (r"^unet\.mag_output\.0\.", "unet.mag_out."), (r"^unet\.pha_output\.0\.", "unet.pha_out."),
]


def rename(key: str) -> str:
    for pattern, repl in RULES:
        key = re.sub(pattern, repl, key)
    return key


def convert_state_dict(theirs: dict[str, torch.Tensor], model: Muse, source: str) -> dict[str, torch.Tensor]:
    """MUSE's generator state dict under this package's names; ConfigError on any unmatched tensor."""
    mine = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in theirs.items():
        new = rename(key)
        if new not in mine:
            raise ConfigError(f"{source}: tensor {key!r} has no place in this MUSE (renamed {new!r})")
        if tuple(mine[new].shape) != tuple(value.shape):
            raise ConfigError(f"{source}: tensor {key!r} has shape {tuple(value.shape)}, expected "
                              f"{tuple(mine[new].shape)} for {new!r}")
        out[new] = value.float()
    missing = sorted(set(mine) - set(out))
    if missing:
        raise ConfigError(f"{source}: {len(missing)} tensors of this MUSE are not in the checkpoint "
                          f"(first: {missing[:3]})")
    return out


def load_muse_checkpoint(path: str | Path, sample_rate: int = 16000, **overrides: Any) -> Muse:
    """MUSE's ``g_best`` at ``path`` as a ``Muse`` in eval mode (``overrides``: config changes that keep
    the weights' shapes, e.g. ``segment_samples=0`` for whole-utterance inference)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: MUSE checkpoint not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on a damaged or foreign file
        text = str(exc).strip().splitlines()
        raise ConfigError(f"{path}: not a readable MUSE checkpoint ({text[0][:200] if text else type(exc).__name__})"
                          ) from None
    if not isinstance(blob, dict) or not isinstance(blob.get("generator"), dict):
        raise ConfigError(f"{path}: not a MUSE checkpoint (expected a dict with a 'generator' state dict)")
    model = Muse.from_config({**muse_config(), **overrides}, sample_rate)
    model.load_state_dict(convert_state_dict(blob["generator"], model, str(path)))
    return model.eval()
