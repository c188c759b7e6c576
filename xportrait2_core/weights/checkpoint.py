"""Reading, checking and converting the four official X-NeMo weight files.

Official files are plain ``torch.save`` state dicts (read with ``weights_only=True``, never
unpickling arbitrary objects); our conversions are ``.safetensors`` with identical names. The
reference UNet and motion encoder load strictly; the denoiser takes the optional base
sd-image-variations UNet weights, then the denoiser file, then the temporal file (a later file
wins on overlap), and every key must have come from one of them. Every failure is one
:class:`CheckpointError` that names the file and says what is wrong.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

DENOISER = "xnemo_denoising_unet"
TEMPORAL = "xnemo_temporal_module"
REFERENCE = "xnemo_reference_unet"
MOTION_ENCODER = "xnemo_motion_encoder"
OFFICIAL_FILES = (DENOISER, TEMPORAL, REFERENCE, MOTION_ENCODER)
EXTENSIONS = (".safetensors", ".pth")

OFFICIAL_SOURCE = (
    "The official X-NeMo weights are distributed only through the authors' Google Drive, linked from "
    "https://github.com/bytedance/x-nemo-inference (README, 'pretrained_weights')."
)


class CheckpointError(RuntimeError):
    """A weight file that cannot be used, with the file and the reason in the message."""


def describe_checkpoint(keys: Iterable[str]) -> str:
    """Which network a set of state-dict keys belongs to, for error messages."""
    keys = set(keys)
    if any(k.startswith("model.conv1.") for k in keys):
        return "the motion encoder"
    if keys and all(".temporal_modules." in k for k in keys):
        return "the temporal modules"
    if any(".motion_modules." in k for k in keys):
        return "the denoising UNet"
    if "conv_in.weight" in keys:
        return "a 2D UNet (reference UNet)" if "conv_out.weight" not in keys else "a 2D UNet with output head"
    return "an unknown network"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` (official) or ``.safetensors`` file, on the CPU (memory-mapped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {error}") from None
    else:
        state = _read_torch_file(path)
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {not_tensors[:5]}")
    return dict(state)


def _read_torch_file(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects besides tensors (a pickle that could run "
                "code). Only plain state dicts of tensors are loaded."
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {error}") from None
    except RuntimeError as error:
        if "mmap" in str(error):  # legacy (non-zip) torch.save format cannot be memory-mapped
            try:
                return torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as inner:
                raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {inner}") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {error}") from None
    except (EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {error}") from None


@dataclass
class LoadReport:
    """Which file supplied which keys of one network."""

    network: str
    supplied_by: dict[str, str] = field(default_factory=dict)

    def keys_from(self, source: str) -> list[str]:
        return [k for k, s in self.supplied_by.items() if s == source]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for source in self.supplied_by.values():
            counts[source] = counts.get(source, 0) + 1
        parts = ", ".join(f"{n} from {Path(s).name}" for s, n in counts.items())
        return f"{self.network}: {len(self.supplied_by)} keys ({parts})"


def load_network(
    model: nn.Module,
    network: str,
    sources: list[tuple[Path, Mapping[str, torch.Tensor]]],
    allow_partial_sources: bool = False,
) -> LoadReport:
    """Load ``sources`` (in order; later files win) into ``model`` with strict key and shape checks.

    With ``allow_partial_sources`` each file may hold a subset of the keys (the denoiser's files);
    otherwise the single file must match the model exactly. Either way no key of the model may be
    left without a value, and no file may hold a key the model does not have."""
    expected = model.state_dict()
    report = LoadReport(network)
    merged: dict[str, torch.Tensor] = {}
    for path, state in sources:
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise CheckpointError(
                f"{path}: {len(unexpected)} keys that {network} does not have (e.g. {unexpected[:3]}); "
                f"this file looks like {describe_checkpoint(state)}"
            )
        for key, tensor in state.items():
            if tensor.shape != expected[key].shape:
                raise CheckpointError(
                    f"{path}: {key} has shape {tuple(tensor.shape)}, {network} expects {tuple(expected[key].shape)} "
                    "(weights of another model size or configuration?)"
                )
            merged[key] = tensor
            report.supplied_by[key] = str(path)
        if not allow_partial_sources:
            missing = sorted(set(expected) - set(state))
            if missing:
                raise CheckpointError(
                    f"{path}: {len(missing)} keys of {network} are missing (e.g. {missing[:3]}); "
                    f"this file looks like {describe_checkpoint(state)}"
                )
    missing = sorted(set(expected) - set(merged))
    if missing:
        names = ", ".join(str(p) for p, _ in sources)
        raise CheckpointError(f"{network}: {len(missing)} keys supplied by none of {names} (e.g. {missing[:3]})")
    model.load_state_dict(merged, strict=True)
    return report


def find_weight_file(folder: Path, name: str) -> Path:
    """``name.safetensors`` (preferred) or ``name.pth`` in ``folder``."""
    for extension in EXTENSIONS:
        candidate = Path(folder) / f"{name}{extension}"
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"{name}.pth (or {name}.safetensors) not found in {folder}. {OFFICIAL_SOURCE} "
        f"Put the four files {', '.join(f + '.pth' for f in OFFICIAL_FILES)} in that folder."
    )


def convert_to_safetensors(source: Path, target: Path, dtype: Optional[torch.dtype] = torch.float16) -> Path:
    """Write the tensors of an official ``.pth`` as ``.safetensors`` (floating tensors cast to
    ``dtype``; None keeps them as they are). Written to a temporary name, then renamed."""
    state = read_state_dict(source)
    converted = {
        key: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
        for key, t in state.items()
    }
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    try:
        save_file(converted, str(partial), metadata={"converted_from": Path(source).name})
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
