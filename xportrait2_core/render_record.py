"""What made a finished video of ``xportrait2 batch``, kept beside it, so that running the batch
again skips a video only when it would be made exactly so again.

The record is a small JSON file beside the video, ``<video>.xportrait2.json`` (a sidecar survives
every container and any tool that rewrites a video's metadata). It holds the video's own size and
SHA-256, so a file put in the video's place later is not mistaken for it, and what the video was
made with: the size and SHA-256 of every input file and weight file, and every setting that changes
its pixels (or its sound). It is written, atomically, only once the video is complete.

Files are identified by their whole content, streamed through SHA-256, 0.6 to 1.2 GB/s on one core
of a shared 2-core machine (``bench/file_identity.py``): a long take or the X-NeMo weights cost seconds, once
per process (a file's hash is kept for as long as its size, modification and change times and inode
stay the same), against minutes of rendering a job, and nothing short of the content proves that a take
trimmed in place, or weights swapped for others of the same size, are the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Optional

from .animate import AnimateRequest
from .finished_files import write_text_atomically
from .media.face_detector import find_yunet_weights
from .media.images import MediaError, require_existing_file
from .weights.loading import DTYPES, WeightFiles
from .weights.standalone_models import CLIP_IMAGE_ENCODER, SVD_VAE

RECORD_SUFFIX = ".xportrait2.json"
RECORD_VERSION = 1
CHUNK = 1 << 20
# Request fields that do not change the video: where it goes and how it is computed (the device
# is the runner's: a Ray worker's GPU is not known here; --compile and the low-VRAM switches give
# the same video). The weights and the face detector are recorded by their files.
NOT_RECORDED = {"output", "weights", "face_detector", "device", "allow_download", "overwrite", "compile", "low_vram"}
# Request fields under the names the command line and the manifest give them.
SHOWN_AS = {"source": "portrait", "guidance_scale": "guidance"}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

_known_hashes: dict[tuple, str] = {}


def record_path(video: Path) -> Path:
    return video.with_name(video.name + RECORD_SUFFIX)


def file_identity(path: Path, what: str = "file") -> str:
    """``"<size> bytes, sha256 <hex>"`` of a file's content; a file that cannot be read is a
    :class:`MediaError` naming it."""
    path = require_existing_file(path, what)
    status = path.stat()
    key = (str(path.resolve()), status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
    if key not in _known_hashes:
        digest = hashlib.sha256()
        try:
            with path.open("rb") as file:
                while chunk := file.read(CHUNK):
                    digest.update(chunk)
        except OSError as error:
            raise MediaError(f"cannot read {path}: {error.strerror}") from None
        _known_hashes[key] = digest.hexdigest()
    return f"{status.st_size} bytes, sha256 {_known_hashes[key]}"


def _recorded(value, what: str):
    """A request field as JSON: files by their identity, settings as they are."""
    if isinstance(value, Path):
        return file_identity(value, what)
    if dataclasses.is_dataclass(value):
        return {field.name: _recorded(getattr(value, field.name), what) for field in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_recorded(item, what) for item in value]
    return value


def _weight_files(request: AnimateRequest) -> dict[str, str]:
    """Every file of the weights the render reads, named as in the weights folder, the face detector's too."""
    found = WeightFiles.discover(request.weights)
    files = [path for field in dataclasses.fields(found) if (path := getattr(found, field.name)) is not None]
    for part in (CLIP_IMAGE_ENCODER, SVD_VAE):
        folder = part.local_folder(request.weights)
        if part.is_complete(folder):  # else the Hugging Face release of that name, which does not change
            files += [file for file in sorted(folder.iterdir()) if file.is_file()]
    files.append(find_yunet_weights(request.face_detector, [request.weights]))
    weights = Path(request.weights)
    return {
        str(path.relative_to(weights) if path.is_relative_to(weights) else path): file_identity(path, "weights file")
        for path in files
    }


def made_with(request: AnimateRequest) -> dict:
    """What a video of ``request`` is made with: its input files and weights (by content) and every
    setting that changes it. Two requests with the same one make the same video."""
    recipe: dict = {}
    for field in dataclasses.fields(request):
        if field.name in NOT_RECORDED:
            continue
        value, name = getattr(request, field.name), SHOWN_AS.get(field.name, field.name)
        if field.name == "settings":
            recipe.update({SHOWN_AS.get(k, k): v for k, v in _recorded(value, "").items()})
        elif field.name == "dtype":
            recipe[name] = DTYPE_NAMES.get(value, str(value)) if value is not None else "auto"
        else:
            recipe[name] = _recorded(value, "driving video" if "driv" in name else name)
    recipe["weights"] = _weight_files(request)
    return recipe


def write_record(video: Path, recipe: dict, frames: int) -> None:
    """Record what made the finished ``video`` beside it (atomically)."""
    document = {"version": RECORD_VERSION, "video": file_identity(video, "video"), "frames": frames, "made_with": recipe}
    write_text_atomically(record_path(video), json.dumps(document, indent=2) + "\n")


def read_record(video: Path) -> Optional[dict]:
    """The record beside ``video``, or None when there is none that this version reads."""
    try:
        document = json.loads(record_path(video).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict) or document.get("version") != RECORD_VERSION:
        return None
    if not isinstance(document.get("made_with"), dict) or not isinstance(document.get("video"), str):
        return None
    return document


def _leaves(value, prefix: str = "") -> dict[str, object]:
    """A nested record flattened: ``{"weights": {"a.pth": x}}`` -> ``{"weights a.pth": x}``."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _leaves(item, f"{prefix}{key} ").items()}
    if isinstance(value, list):  # an empty list has no leaves: one item more reads "more_driving 0: another file"
        return {k: v for index, item in enumerate(value) for k, v in _leaves(item, f"{prefix}{index} ").items()}
    return {prefix.rstrip(): value}


def _shown(value) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _is_identity(value) -> bool:
    return isinstance(value, str) and " bytes, sha256 " in value


def changes(before: dict, now: dict) -> list[str]:
    """What differs between two :func:`made_with` results, one short phrase each, settings first:
    ``"steps 8 -> 2"``, ``"portrait: another file"``, ``"weights xnemo_motion_encoder.pth: another file"``."""
    old, new = _leaves(before), _leaves(now)
    said = []
    for key in sorted(set(old) | set(new), key=lambda k: (k.startswith("weights "), k)):
        was, now_is = old.get(key), new.get(key)
        if was == now_is:
            continue
        if _is_identity(was) or _is_identity(now_is):
            said.append(f"{key}: another file")
        else:
            said.append(f"{key} {_shown(was)} -> {_shown(now_is)}")
    return said


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What a rerun does with a video already where a job writes: "skip" it (made exactly as it
    would be now), "redo" it (this batch made it otherwise: ``why`` says how), or refuse it as
    "foreign" (not a video this batch made, or changed since: ``why`` says which)."""

    action: str
    why: str = ""
    frames: Optional[int] = None


def verdict(video: Path, recipe: dict) -> Verdict:
    record = read_record(video)
    if record is None:
        return Verdict("foreign", f"no {record_path(video).name} beside it says this batch made it")
    try:
        same_video = record["video"] == file_identity(video, "video")
    except MediaError:  # emptied, or no longer readable
        same_video = False
    if not same_video:
        return Verdict("foreign", f"it was replaced or changed since {record_path(video).name} was written")
    if record["made_with"] == recipe:
        frames = record.get("frames")
        return Verdict("skip", frames=frames if isinstance(frames, int) else None)
    return Verdict("redo", ", ".join(changes(record["made_with"], recipe)))
