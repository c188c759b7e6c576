"""Rename the keys of the SVD temporal VAE from diffusers naming to the SGM/LDM naming that
ComfyUI recognises (spec section 8).

The diffusers file of ``stable-video-diffusion-img2vid-xt/vae`` is what the official code loads,
but ComfyUI only detects a temporal VAE by the SGM key ``decoder.mid.block_1.mix_factor`` and
falls back to a plain VAE (loading almost nothing) otherwise. The tensors are the same; only the
names differ, the 1x1 attention projections are stored as linear layers in diffusers and as
1x1 convolutions in SGM, and ComfyUI's temporal VAE has no ``quant_conv`` after the encoder, so
that 1x1 convolution is folded into the encoder's last convolution (exact: both are linear).
No ComfyUI import.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import torch

# A key with this prefix marks the diffusers AutoencoderKLTemporalDecoder layout.
DIFFUSERS_MARKER = "decoder.mid_block.resnets.0.spatial_res_block.conv1.weight"

_RESNET_PARTS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_TEMPORAL_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3"}
_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def is_diffusers_temporal_vae(state: Mapping[str, torch.Tensor]) -> bool:
    return DIFFUSERS_MARKER in state


def _up_index(state: Mapping[str, torch.Tensor]) -> Callable[[int], int]:
    # diffusers counts decoder up blocks from the lowest resolution, SGM from the highest.
    levels = {int(m.group(1)) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    last = max(levels, default=0)
    return lambda index: last - index


def _resnet_key(prefix: str, rest: str) -> str:
    """``rest`` below one resnet: spatial / temporal parts, mixer, or a plain (encoder) resnet."""
    if rest.startswith("spatial_res_block."):
        part, leaf = rest[len("spatial_res_block."):].rsplit(".", 1)
        return f"{prefix}.{_RESNET_PARTS[part]}.{leaf}"
    if rest.startswith("temporal_res_block."):
        part, leaf = rest[len("temporal_res_block."):].rsplit(".", 1)
        return f"{prefix}.time_stack.{_TEMPORAL_PARTS[part]}.{leaf}"
    if rest == "time_mixer.mix_factor":
        return f"{prefix}.mix_factor"
    part, leaf = rest.rsplit(".", 1)
    return f"{prefix}.{_RESNET_PARTS[part]}.{leaf}"


def _attention_key(prefix: str, rest: str) -> str:
    part, leaf = rest.rsplit(".", 1)
    return f"{prefix}.attn_1.{_ATTENTION_PARTS[part]}.{leaf}"


def _renamed(key: str, up_index: Callable[[int], int]) -> str:
    top = {"conv_norm_out": "norm_out", "time_conv_out": "conv_out.time_mix_conv"}
    for side in ("encoder", "decoder"):
        if not key.startswith(side + "."):
            continue
        rest = key[len(side) + 1:]
        if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
            return _resnet_key(f"{side}.mid.block_{int(m.group(1)) + 1}", m.group(2))
        if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
            return _attention_key(f"{side}.mid", m.group(1))
        if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            return _resnet_key(f"{side}.down.{m.group(1)}.block.{m.group(2)}", m.group(3))
        if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", rest):
            return f"{side}.down.{m.group(1)}.downsample.conv.{m.group(2)}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            return _resnet_key(f"{side}.up.{up_index(int(m.group(1)))}.block.{m.group(2)}", m.group(3))
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", rest):
            return f"{side}.up.{up_index(int(m.group(1)))}.upsample.conv.{m.group(2)}"
        name, leaf = rest.rsplit(".", 1)
        return f"{side}.{top.get(name, name)}.{leaf}"
    return key


def _fold_quant_conv(state: dict[str, torch.Tensor]) -> None:
    """encoder.conv_out followed by the 1x1 quant_conv -> one convolution with the same output."""
    projection = state.pop("quant_conv.weight")[:, :, 0, 0].float()
    shift = state.pop("quant_conv.bias").float()
    weight, bias = state["encoder.conv_out.weight"], state["encoder.conv_out.bias"]
    state["encoder.conv_out.weight"] = torch.einsum("oi,ichw->ochw", projection, weight.float()).to(weight.dtype)
    state["encoder.conv_out.bias"] = (projection @ bias.float() + shift).to(bias.dtype)


def diffusers_to_sgm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same model under SGM names (see the module docstring)."""
    up_index = _up_index(state)
    converted = {}
    for key, tensor in state.items():
        if key.startswith("quant_conv."):
            converted[key] = tensor
            continue
        new_key = _renamed(key, up_index)
        if ".attn_1." in new_key and new_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        converted[new_key] = tensor
    if "quant_conv.weight" in converted:
        _fold_quant_conv(converted)
    return converted
