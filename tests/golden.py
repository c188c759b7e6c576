"""Access to the golden fixtures made by the official X-NeMo code (``../shared/golden``)."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load

from harness import SHARED

GOLDEN_ROOT = SHARED / "golden"

# Every comparison made in this session, printed as the parity table at the end of the run.
PARITY_RESULTS: list[dict] = []

# ../shared/golden/README.md, "How to use them in a test": per float32 tensor on the CPU.
FLOAT32_RELATIVE_L2 = 1e-4
FLOAT32_MAX_ABS_SCALE = 1e-4


def fixture_dirs() -> list[Path]:
    """Every fixture folder under ../shared/golden plus those listed in XP2_GOLDEN_DIRS."""
    found = sorted(p.parent for p in GOLDEN_ROOT.glob("*/manifest.json"))
    extra = [Path(p) for p in os.environ.get("XP2_GOLDEN_DIRS", "").split(":") if p]
    for folder in extra:
        if not (folder / "manifest.json").is_file():
            raise FileNotFoundError(f"XP2_GOLDEN_DIRS names {folder}, which has no manifest.json")
    return found + extra


@dataclass
class GoldenFixture:
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @cached_property
    def manifest(self) -> dict:
        return json.loads((self.folder / "manifest.json").read_text())

    def read_bytes(self, relative: str) -> bytes:
        """A fixture file, unpacking ``FILE.xz`` when only the packed copy exists (sha256 checked)."""
        plain = self.folder / relative
        if plain.exists():
            return plain.read_bytes()
        with lzma.open(str(plain) + ".xz") as packed:
            data = packed.read()
        expected = self.manifest.get("packed_files", {}).get(relative, {}).get("sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise ValueError(f"{self.folder / relative}.xz does not unpack to the recorded sha256")
        return data

    def tensors(self, relative: str) -> dict[str, torch.Tensor]:
        return load(self.read_bytes(relative))

    def materialise_weights(self, target: Path, extension: str = ".pth") -> Path:
        """Lay the fixture's official-layout weights and config files out under ``target``
        (unpacked), as a user's folder would look: returns the ``pretrained_weights`` folder."""
        weights = target / "pretrained_weights"
        for relative in self.manifest["files"]:
            if relative.endswith((".json", ".yaml")) and "/" in relative:
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.folder / relative, destination)
        weights.mkdir(parents=True, exist_ok=True)
        for name in self.manifest["weights"]:
            relative = f"pretrained_weights/{Path(name).stem}{extension}"
            (target / relative).write_bytes(self.read_bytes(relative))
        return weights

    def tolerance(self, reference: torch.Tensor) -> tuple[float, float]:
        """(relative L2, max abs) allowed for a tensor: the manifest's, else the README's float32 rule."""
        rule = self.manifest.get("tolerance", {})
        relative = rule.get("relative_l2", FLOAT32_RELATIVE_L2)
        scale = rule.get("max_abs_scale", FLOAT32_MAX_ABS_SCALE)
        return relative, scale * max(1.0, reference.abs().max().item())


def compare(fixture: GoldenFixture, name: str, ours: torch.Tensor, reference: torch.Tensor) -> dict:
    """Assert that ``ours`` matches ``reference`` within the fixture's tolerance; return the errors."""
    assert ours.shape == reference.shape, f"{fixture.name}/{name}: shape {tuple(ours.shape)} != {tuple(reference.shape)}"
    if not reference.is_floating_point():
        assert torch.equal(ours.cpu(), reference), f"{fixture.name}/{name}: integer tensors differ"
        return {"name": name, "max_abs": 0.0, "relative_l2": 0.0}
    ours = ours.detach().float().cpu()
    difference = ours - reference
    max_abs = difference.abs().max().item()
    relative_l2 = (difference.norm() / reference.norm().clamp_min(1e-30)).item()
    allowed_relative, allowed_abs = fixture.tolerance(reference)
    result = {"fixture": fixture.name, "name": name, "max_abs": max_abs, "relative_l2": relative_l2}
    PARITY_RESULTS.append(result)
    assert relative_l2 <= allowed_relative and max_abs <= allowed_abs, (
        f"{fixture.name}/{name}: relative L2 {relative_l2:.3g} (allowed {allowed_relative:.3g}), "
        f"max abs {max_abs:.3g} (allowed {allowed_abs:.3g})"
    )
    return result
