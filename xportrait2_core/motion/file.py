"""The motion file: a take's per-frame motion, saved once and reused on any portrait.

What is saved is the motion encoder trunk's 512 features per frame of each performer, the motion
*before* the identity filter: the same quantity that Motion Encode gives ID-Filtered Motion Latents,
so a loaded file plugs in where an encoded take does, and every edit in time (:mod:`.edits`)
happens before the filter. The features carry no image of the performer.

A ``.safetensors`` file (no pickles): one float32 ``(F, 512)`` tensor per performer, named
``performer.0``, ``performer.1``, ... in face order, and metadata (strings) with the format and its
version, the take's exact frame rate as a fraction (``30000/1001``), the frame count, the
fingerprint of the encoder that made it and a line per step of its history. float32 holds the
fp16/bf16 features of a GPU run exactly, so a file read back gives the very features it was made of.

Every way a file can be wrong is one :class:`MotionFileError` line, never a traceback and never a
silently wrong video.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..finished_files import publish
from ..media.images import MediaError
from ..models.motion_encoder import FEATURE_DIM, MotionEncoder

FORMAT = "xportrait2-motion"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
STORED_DTYPE = torch.float32
MIN_FRAMES = 2  # as a driving video needs


class MotionFileError(MediaError):
    """A motion file that cannot be used as it is (the command line prints it as one line)."""


@dataclass(frozen=True)
class Motion:
    """Per-frame motion features of one take's performers, at an exact frame rate."""

    performers: tuple[torch.Tensor, ...]  # each (F, 512), in face order
    fps: Fraction
    encoder: str  # fingerprint of the motion encoder that made the features
    history: tuple[str, ...] = ()  # what the take was and each edit since, for the reader of the file

    def __post_init__(self) -> None:
        if not self.performers:
            raise ValueError("a motion holds at least one performer")
        lengths = {len(features) for features in self.performers}
        if len(lengths) != 1:
            raise ValueError(f"every performer of a motion has the same frame count, got {sorted(lengths)}")

    @property
    def frame_count(self) -> int:
        return len(self.performers[0])

    @property
    def seconds(self) -> Fraction:
        return self.frame_count / self.fps

    def with_performers(self, performers, fps: Fraction | None = None, step: str = "") -> Motion:
        """The same motion's metadata over new features (an edit's result), ``step`` added to its history."""
        history = self.history + ((step,) if step else ())
        return dataclasses.replace(self, performers=tuple(performers), fps=self.fps if fps is None else fps, history=history)

    def performer(self, index: int, name: str = "the motion file") -> torch.Tensor:
        if not 0 <= index < len(self.performers):
            raise MotionFileError(
                f"performer {index} not in {name}: it holds {len(self.performers)} performer(s), 0 to {len(self.performers) - 1}"
            )
        return self.performers[index]


def encoder_fingerprint(encoder: MotionEncoder) -> str:
    """SHA-256 of the encoder's config and its weights (names, shapes and float32 values): the same
    weights file gives the same fingerprint on any device and in fp32 or fp16 (an fp16 file's
    weights are held exactly either way), another encoder another one."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(encoder.config), sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def parse_fps(text: str) -> Fraction:
    """``"25"``, ``"30000/1001"`` or ``"29.97"`` -> an exact positive Fraction."""
    try:
        fps = Fraction(str(text).strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"a frame rate is a number or a fraction such as 30000/1001, got {text!r}") from None
    if fps <= 0:
        raise ValueError(f"a frame rate must be positive, got {text!r}")
    return fps


def save_motion(motion: Motion, target: Path, overwrite: bool = False) -> Path:
    """Write ``motion`` to ``target``; the file appears only when it is complete."""
    target = Path(target)
    if target.suffix.lower() != SUFFIX:
        raise MotionFileError(f"{target.name}: a motion file ends in {SUFFIX} (e.g. take.motion{SUFFIX})")
    if target.exists() and not overwrite:
        raise MotionFileError(f"{target} already exists; pass --overwrite to replace it")
    if not target.parent.is_dir():
        raise MotionFileError(f"cannot write {target}: folder {target.parent} does not exist")
    tensors = {f"performer.{i}": features.detach().to("cpu", STORED_DTYPE).contiguous() for i, features in enumerate(motion.performers)}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "fps": f"{motion.fps.numerator}/{motion.fps.denominator}",
        "frame_count": str(motion.frame_count),
        "performers": str(len(motion.performers)),
        "encoder": motion.encoder,
        "history": json.dumps(list(motion.history)),
    }
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        publish(Path(temporary), target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def _field(metadata: dict[str, str], key: str, name: str) -> str:
    if key not in metadata:
        raise MotionFileError(f"{name} is damaged: its metadata lacks {key!r}")
    return metadata[key]


def _count(metadata: dict[str, str], key: str, name: str, least: int) -> int:
    text = _field(metadata, key, name)
    if not text.isdigit() or int(text) < least:
        raise MotionFileError(f"{name} is damaged: {key} is {text!r}, not a whole number of at least {least}")
    return int(text)


def _check_format(metadata: dict[str, str] | None, name: str) -> None:
    if not metadata or metadata.get("format") != FORMAT:
        raise MotionFileError(f"{name} is a safetensors file but not an xportrait2 motion file (make one with `xportrait2 motion TAKE`)")
    version = _field(metadata, "format_version", name)
    if not version.isdigit():
        raise MotionFileError(f"{name} is damaged: format_version is {version!r}")
    if int(version) > FORMAT_VERSION:
        raise MotionFileError(
            f"{name} is motion format version {version}, newer than this xportrait2 reads ({FORMAT_VERSION}): update xportrait2"
        )


def _checked_features(features: torch.Tensor, key: str, frames: int, name: str) -> torch.Tensor:
    if features.dtype != STORED_DTYPE:
        raise MotionFileError(f"{name} is damaged: {key} is {features.dtype}, motion files hold {STORED_DTYPE}")
    if tuple(features.shape) != (frames, FEATURE_DIM):
        raise MotionFileError(f"{name} is damaged: {key} has shape {tuple(features.shape)}, expected ({frames}, {FEATURE_DIM})")
    if not torch.isfinite(features).all():
        raise MotionFileError(f"{name} is damaged: {key} holds values that are not finite")
    return features


def load_motion(source: Path) -> Motion:
    """Read and check a motion file (safetensors: no code is run)."""
    source = Path(source)
    name = source.name
    if not source.is_file():
        raise MotionFileError(f"motion file {source} does not exist")
    try:
        with safe_open(str(source), framework="pt") as opened:
            metadata = opened.metadata()
            _check_format(metadata, name)
            frames = _count(metadata, "frame_count", name, MIN_FRAMES)
            count = _count(metadata, "performers", name, 1)
            keys = [f"performer.{i}" for i in range(count)]
            if sorted(opened.keys()) != sorted(keys):
                raise MotionFileError(f"{name} is damaged: it holds {sorted(opened.keys())}, expected {keys}")
            performers = tuple(_checked_features(opened.get_tensor(key), key, frames, name) for key in keys)
    except SafetensorError as error:
        raise MotionFileError(f"{name} is damaged or truncated, not a readable safetensors file ({error})") from None
    try:
        fps = parse_fps(_field(metadata, "fps", name))
    except ValueError as error:
        raise MotionFileError(f"{name} is damaged: {error}") from None
    try:
        history = tuple(str(line) for line in json.loads(metadata.get("history", "[]")))
    except (ValueError, TypeError):
        raise MotionFileError(f"{name} is damaged: its history is not a JSON list") from None
    return Motion(performers, fps, _field(metadata, "encoder", name), history)


def check_encoder(motion: Motion, encoder: MotionEncoder, name: str) -> None:
    """Refuse a motion made by another motion encoder: its features mean nothing to this one."""
    fingerprint = encoder_fingerprint(encoder)
    if motion.encoder != fingerprint:
        raise MotionFileError(
            f"{name} was made by another motion encoder (fingerprint {motion.encoder[:12]}, these weights' is "
            f"{fingerprint[:12]}): make it again from the take with these weights"
        )


def is_motion_file(path: Path | str) -> bool:
    """Whether a driving input names a motion file rather than a video."""
    return str(path).lower().endswith(SUFFIX)
