"""The architectures of the networks, each fully described by one dataclass.

The two UNets' config is built from the sd-image-variations ``unet/config.json`` plus the official
``unet_additional_kwargs`` (``configs/inference/inference_xnemo_stage2.yaml``); the motion
encoder's is the official one unless the weights folder holds ``xnemo_motion_encoder.json`` (tiny
test weights describe a narrower encoder there). The real models and the tiny test variants are
the same code with different configs. Options the official model does not use are refused with a
clear error instead of being silently ignored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

CROSS_ATTENTION_DOWN = "CrossAttnDownBlock2D"
PLAIN_DOWN = "DownBlock2D"
CROSS_ATTENTION_UP = "CrossAttnUpBlock2D"
PLAIN_UP = "UpBlock2D"

# sd-image-variations-diffusers unet/config.json (the fields that shape the network)
OFFICIAL_UNET_CONFIG: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": [CROSS_ATTENTION_DOWN] * 3 + [PLAIN_DOWN],
    "up_block_types": [PLAIN_UP] + [CROSS_ATTENTION_UP] * 3,
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "use_linear_projection": False,
}

# configs/inference/inference_xnemo_stage2.yaml: unet_additional_kwargs
OFFICIAL_ADDITIONAL_KWARGS: dict[str, Any] = {
    "use_inflated_groupnorm": True,
    "unet_use_cross_frame_attention": False,
    "unet_use_temporal_attention": False,
    "use_motion_module": True,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": True,
    "motion_module_decoder_only": False,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 8,
        "num_transformer_block": 1,
        "cross_attention_dim": 16,
        "attention_block_types": ["Spatial_Cross", "Spatial_Cross"],
        "temporal_position_encoding": False,
        "temporal_position_encoding_max_len": 32,
        "temporal_attention_dim_div": 1,
    },
    "use_temporal_module": True,
    "temporal_module_type": "Vanilla",
    "temporal_module_kwargs": {
        "num_attention_heads": 8,
        "num_transformer_block": 1,
        "attention_block_types": ["Temporal_Self", "Temporal_Self"],
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 32,
        "temporal_attention_dim_div": 1,
    },
}


class ConfigError(ValueError):
    """A configuration that does not describe an X-NeMo network this engine can build."""


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the denoising UNet3D; the reference UNet is the same network without the
    motion/temporal modules and the output head."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    cross_attention_levels: tuple[bool, ...] = (True, True, True, False)
    layers_per_block: int = 2
    attention_heads: int = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    motion_heads: int = 8
    motion_token_dim: int = 16
    temporal_heads: int = 8
    temporal_max_frames: int = 32
    # Which down levels / up levels / the mid block carry motion + temporal modules.
    module_down_levels: tuple[bool, ...] = (True, True, True, True)
    module_up_levels: tuple[bool, ...] = (True, True, True, True)
    module_mid_block: bool = True

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    @classmethod
    def official(cls) -> "UNetConfig":
        return cls.from_dicts(OFFICIAL_UNET_CONFIG, OFFICIAL_ADDITIONAL_KWARGS)

    @classmethod
    def from_dicts(cls, unet_config: Mapping[str, Any], additional_kwargs: Mapping[str, Any]) -> "UNetConfig":
        """Build from the 2D UNet ``config.json`` contents and ``unet_additional_kwargs``."""
        u = {**OFFICIAL_UNET_CONFIG, **{k: v for k, v in unet_config.items() if not k.startswith("_")}}
        extra = {**OFFICIAL_ADDITIONAL_KWARGS, **additional_kwargs}
        down, up = list(u["down_block_types"]), list(u["up_block_types"])
        levels = len(u["block_out_channels"])
        if len(down) != levels or len(up) != levels:
            raise ConfigError("down_block_types and up_block_types must have one entry per block_out_channels")
        unknown = set(down) - {CROSS_ATTENTION_DOWN, PLAIN_DOWN} | set(up) - {CROSS_ATTENTION_UP, PLAIN_UP}
        if unknown:
            raise ConfigError(f"unsupported UNet block types: {sorted(unknown)}")
        cross = tuple(t == CROSS_ATTENTION_DOWN for t in down)
        if tuple(t == CROSS_ATTENTION_UP for t in reversed(up)) != cross:
            raise ConfigError("up blocks must mirror the down blocks (cross-attention levels differ)")
        heads = u["attention_head_dim"]
        if not isinstance(heads, int):
            raise ConfigError("per-level attention_head_dim lists are not supported")
        _require(u, "use_linear_projection", False)
        _require(u, "center_input_sample", False)
        _require(u, "only_cross_attention", False)
        _require(u, "dual_cross_attention", False)
        _require(u, "upcast_attention", False)
        _require(u, "class_embed_type", None)
        _require(u, "num_class_embeds", None)
        _require(u, "resnet_time_scale_shift", "default")
        _require(u, "mid_block_scale_factor", 1)
        _require(u, "downsample_padding", 1)
        _require(u, "act_fn", "silu")
        _require(extra, "use_inflated_groupnorm", True)
        _require(extra, "unet_use_cross_frame_attention", False)
        _require(extra, "unet_use_temporal_attention", False)
        _require(extra, "use_motion_module", True)
        _require(extra, "use_temporal_module", True)
        _require(extra, "motion_module_type", "Vanilla")
        _require(extra, "temporal_module_type", "Vanilla")
        motion = {**OFFICIAL_ADDITIONAL_KWARGS["motion_module_kwargs"], **extra["motion_module_kwargs"]}
        temporal = {**OFFICIAL_ADDITIONAL_KWARGS["temporal_module_kwargs"], **extra["temporal_module_kwargs"]}
        for name, kwargs, blocks in (
            ("motion_module_kwargs", motion, ["Spatial_Cross", "Spatial_Cross"]),
            ("temporal_module_kwargs", temporal, ["Temporal_Self", "Temporal_Self"]),
        ):
            _require(kwargs, "attention_block_types", blocks, name)
            _require(kwargs, "num_transformer_block", 1, name)
            _require(kwargs, "temporal_attention_dim_div", 1, name)
        _require(motion, "temporal_position_encoding", False, "motion_module_kwargs")
        _require(temporal, "temporal_position_encoding", True, "temporal_module_kwargs")
        # The official resolution test: 2^i for down level i, 2^(3-i) for up level i (even when
        # there are fewer than four levels).
        resolutions = set(extra["motion_module_resolutions"])
        decoder_only = bool(extra["motion_module_decoder_only"])
        return cls(
            in_channels=u["in_channels"],
            out_channels=u["out_channels"],
            block_out_channels=tuple(u["block_out_channels"]),
            cross_attention_levels=cross,
            layers_per_block=u["layers_per_block"],
            attention_heads=heads,
            cross_attention_dim=u["cross_attention_dim"],
            norm_num_groups=u["norm_num_groups"],
            norm_eps=float(u["norm_eps"]),
            flip_sin_to_cos=bool(u["flip_sin_to_cos"]),
            freq_shift=int(u["freq_shift"]),
            motion_heads=motion["num_attention_heads"],
            motion_token_dim=motion["cross_attention_dim"],
            temporal_heads=temporal["num_attention_heads"],
            temporal_max_frames=temporal["temporal_position_encoding_max_len"],
            module_down_levels=tuple(2**i in resolutions and not decoder_only for i in range(levels)),
            module_up_levels=tuple(2 ** (3 - i) in resolutions for i in range(levels)),
            module_mid_block=bool(extra["motion_module_mid_block"]),
        )

    @classmethod
    def from_files(cls, unet_config_json: Optional[Path], inference_yaml: Optional[Path] = None) -> "UNetConfig":
        """Either file may be absent (None): the official values are used for it."""
        unet_config = _read_mapping(unet_config_json, json.loads) if unet_config_json else {}
        additional: dict[str, Any] = {}
        if inference_yaml is not None:
            additional = _read_mapping(inference_yaml, yaml.safe_load).get("unet_additional_kwargs") or {}
        try:
            return cls.from_dicts(unet_config, additional)
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, ConfigError):
                raise
            files = " and ".join(str(path) for path in (unet_config_json, inference_yaml) if path)
            raise ConfigError(f"{files}: not an X-NeMo architecture ({type(error).__name__}: {error})") from None


def _read_mapping(path: Path, parse) -> dict:
    """A JSON or YAML file that must hold one mapping; anything else is a ConfigError naming it."""
    try:
        value = parse(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: not readable ({first_line})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found {type(value).__name__}")
    return value


def _require(mapping: Mapping[str, Any], key: str, expected: Any, where: str = "config") -> None:
    value = mapping.get(key, expected)
    if isinstance(value, (list, tuple)) and isinstance(expected, (list, tuple)):
        value, expected = list(value), list(expected)
    if value != expected:
        raise ConfigError(f"{where}: {key}={value!r} is not supported (X-NeMo uses {expected!r})")


@dataclass(frozen=True)
class SchedulerConfig:
    """``noise_scheduler_kwargs`` of the official yaml (DDIM, scaled-linear betas)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.02
    steps_offset: int = 1

    @classmethod
    def from_yaml(cls, inference_yaml: Path) -> "SchedulerConfig":
        kwargs = _read_mapping(inference_yaml, yaml.safe_load).get("noise_scheduler_kwargs") or {}
        _require(kwargs, "beta_schedule", "scaled_linear", "noise_scheduler_kwargs")
        _require(kwargs, "prediction_type", "epsilon", "noise_scheduler_kwargs")
        _require(kwargs, "clip_sample", False, "noise_scheduler_kwargs")
        return cls(
            num_train_timesteps=kwargs.get("num_train_timesteps", 1000),
            beta_start=kwargs.get("beta_start", 0.00085),
            beta_end=kwargs.get("beta_end", 0.02),
            steps_offset=kwargs.get("steps_offset", 1),
        )


@dataclass(frozen=True)
class MotionEncoderConfig:
    """Widths of the motion encoder's face trunk (``FAN_SA``); the defaults are the official ones.

    The crop size, the 32 x 16 tokens and the box branch are fixed by the rest of the model and are
    not configurable."""

    stem_channels: int = 64  # conv1, 7x7 at stride 2 on the 224 px crop
    mid_channels: int = 128  # conv2 / att_1 / conv3 at 112 px
    deep_channels: int = 256  # conv4 onwards at 56 px: att_2, the hourglass, att_3
    landmark_channels: int = 68  # l0: one heat map per FAN landmark
    hourglass_depth: int = 4
    attention_dim: int = 1024  # the patch attentions' token width
    attention_heads: int = 8

    def __post_init__(self) -> None:
        for name in ("mid_channels", "deep_channels"):  # their patch attentions' GroupNorm has 32 groups
            if getattr(self, name) % 32:
                raise ConfigError(f"motion encoder config: {name} must be a multiple of 32, got {getattr(self, name)}")
        if self.stem_channels % 4 or self.stem_channels < 4:
            raise ConfigError(f"motion encoder config: stem_channels must be a multiple of 4, got {self.stem_channels}")
        # att_1 un-patchifies 4x4 patches: each token carries 16 pixels of attention_dim / 16 channels.
        if self.attention_dim % 16 or self.attention_dim % self.attention_heads:
            raise ConfigError(
                f"motion encoder config: attention_dim ({self.attention_dim}) must be a multiple of 16 and of "
                f"attention_heads ({self.attention_heads})"
            )
        if not 1 <= self.hourglass_depth <= 5 or self.landmark_channels < 1:
            raise ConfigError("motion encoder config: hourglass_depth must be 1 to 5 and landmark_channels positive")

    @classmethod
    def from_file(cls, path: Optional[Path]) -> "MotionEncoderConfig":
        """The official encoder when ``path`` is None; otherwise the JSON object of the file, every
        key one of this class's fields."""
        if path is None:
            return cls()
        values = _read_mapping(path, json.loads)
        known = {f.name for f in fields(cls)}
        if set(values) - known:
            raise ConfigError(f"{path}: expected keys among {sorted(known)}, got {sorted(set(values) - known)!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
            raise ConfigError(f"{path}: every value must be an integer")
        try:
            return cls(**values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"
