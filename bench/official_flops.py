"""FLOPs of the OFFICIAL X-NeMo per-call work, for ``bench/run.py``, in the official environment.

Builds the full-size official networks on the meta device and counts the work of the official
per-call operations with ``torch.utils.flop_counter.FlopCounterMode``; answers with one stdout
line starting with ``@@bench``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch

from official_import import YAML_PATH, import_official, read_yaml, reply


# --------------------------------------------------------------------------------------------
# FLOPs of the official per-call work, full size, on the meta device
# --------------------------------------------------------------------------------------------
SD_IMAGE_VARIATIONS_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "use_linear_projection": False,
}


def build_official_networks(
    official, source: Path, device, dtype=None, config_2d=None
) -> SimpleNamespace:
    """The three official networks built from their configs (no weight files): the
    sd-image-variations UNet config (full size unless ``config_2d``), the UNet3D derived from it
    as ``UNet3DConditionModel.from_pretrained_2d`` does, with the official yaml's kwargs."""
    config_2d = config_2d or SD_IMAGE_VARIATIONS_UNET
    yaml = read_yaml(source / YAML_PATH)
    config_3d = dict(
        config_2d,
        down_block_types=["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
        up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
        mid_block_type="UNetMidBlock3DCrossAttn",
    )
    with torch.device(device):
        reference_unet = official.UNet2DConditionModel.from_config(config_2d)
        denoising_unet = official.UNet3DConditionModel.from_config(
            config_3d, **yaml["unet_additional_kwargs"]
        )
        motion_encoder = official.MotEncoder().eval()
    for network in (reference_unet, denoising_unet, motion_encoder):
        # buffers built from numpy (patch position tables) start on the CPU whatever the device
        network.to(device=device, dtype=dtype).requires_grad_(False)
    return SimpleNamespace(
        reference_unet=reference_unet,
        denoising_unet=denoising_unet,
        motion_encoder=motion_encoder,
        scheduler_kwargs=yaml["noise_scheduler_kwargs"],
    )


def count_flops(function) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        function()
    return int(counter.get_total_flops())


def official_flops(args) -> None:
    """FLOPs of the official operations (full size by default): the motion encoder per window of
    ``--window`` frames, the reference pass (batch 2), and one guidance call of the UNet3D
    (batch 2, reference attention computed for both halves, the unconditional half redone)."""
    official = import_official(Path(args.official_src))
    window, size = args.window, args.latent_size
    config_2d = SD_IMAGE_VARIATIONS_UNET
    if args.unet_config:
        config_2d = {
            k: v
            for k, v in json.loads(Path(args.unet_config).read_text()).items()
            if not k.startswith("_")
        }
    networks = build_official_networks(
        official, Path(args.official_src), "meta", config_2d=config_2d
    )
    reference_unet, denoising_unet, motion_encoder = (
        networks.reference_unet,
        networks.denoising_unet,
        networks.motion_encoder,
    )
    make = official.ReferenceAttentionControl
    writer = make(
        reference_unet,
        do_classifier_free_guidance=True,
        mode="write",
        batch_size=1,
        fusion_blocks="full",
    )
    reader = make(
        denoising_unet,
        do_classifier_free_guidance=True,
        mode="read",
        batch_size=1,
        fusion_blocks="full",
    )
    meta = {"device": "meta"}
    contexts = torch.zeros(2, 1, config_2d["cross_attention_dim"], **meta)
    timestep = torch.tensor(953)

    def reference_pass():
        reference_unet(
            torch.zeros(2, 4, size, size, **meta),
            torch.zeros_like(timestep),
            encoder_hidden_states=contexts,
            return_dict=False,
        )
        reader.update(writer)

    def motion_window():
        motion_encoder(
            torch.zeros(1, 3, window, 224, 224, **meta),
            torch.zeros(1, window, 3, **meta),
        )

    def guidance_call():
        denoising_unet(
            torch.zeros(2, 4, window, size, size, **meta),
            timestep,
            encoder_hidden_states=[contexts, torch.zeros(2, window, 32, 16, **meta)],
            pose_cond_fea=None,
            return_dict=False,
        )

    result = {
        "reference_pass_batch2": count_flops(reference_pass),
        "motion_window": count_flops(motion_window),
        "guidance_call": count_flops(guidance_call),
        "window": window,
        "latent_size": size,
    }
    reply(result)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-src", required=True, help="checkout of bytedance/x-nemo-inference")
    parser.add_argument("--window", type=int, default=24, help="frames per window")
    parser.add_argument("--latent-size", type=int, default=64, help="latent height = width")
    parser.add_argument("--unet-config", help="a 2D UNet config.json (default: sd-image-variations, full size)")
    official_flops(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
