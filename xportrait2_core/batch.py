"""``xportrait2 batch``: many clips in one command, resumable, with one report.

Jobs come from a manifest (CSV with a header row, or JSON Lines), one job a row: ``portrait``,
``driving`` and ``output`` (relative paths are relative to the manifest's folder), and optionally
``seed``, ``steps``, ``guidance``, ``size``, ``max_frames``, ``paste_back``, ``faces`` and
``performer`` overriding the command line's settings for that job. Or from two folders: every portrait with every driving
video, or the n-th with the n-th.

A job whose output already exists (outputs only appear when complete) is skipped, so running
the same batch again finishes what an interrupted run left. A job that fails is recorded with its
one-line error and the batch goes on. Where the jobs run is up to the runner: in this process
(:func:`run_locally`, the models loaded once) or on a Ray cluster (:mod:`xportrait2_core.farm`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from .animate import AnimateRequest, LoadedModels, animate_files, load_all_models, same_file
from .face_drives import parse_performer
from .finished_files import publish
from .media.images import VIDEO_SUFFIXES, MediaError
from .media.portrait_faces import parse_face_selection
from .media.video_reader import probe_video
from .media.video_writer import remove_partial_files
from .motion.file import SUFFIX as MOTION_SUFFIX
from .motion.file import is_motion_file, load_motion
from .progress import ProgressFn

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
REQUIRED_COLUMNS = ("portrait", "driving", "output")
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes", "y"}, {"0", "false", "no", "n"}

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


class ManifestError(ValueError):
    """A manifest or folder pair that cannot be turned into jobs; one line naming the row."""


@dataclass(frozen=True)
class BatchJob:
    """One render; ``label`` names it in the report (its manifest row, or its pair of files)."""

    label: str
    request: AnimateRequest


@dataclass(frozen=True)
class JobResult:
    label: str
    status: str
    output: str
    frames: Optional[int] = None
    seconds: float = 0.0
    error: Optional[str] = None


def _as_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ValueError(f"expected true or false, got {text!r}")


def _face_selection(text: str) -> str:
    parse_face_selection(text)  # refuse a bad selection when the manifest is read, not mid-batch
    return text


# Per-job settings a manifest row may give: column -> (parse, how it changes the request).
_JOB_SETTINGS: dict[str, tuple[Callable, Callable[[AnimateRequest, object], AnimateRequest]]] = {
    "seed": (int, lambda r, v: dataclasses.replace(r, seed=v)),
    "steps": (int, lambda r, v: dataclasses.replace(r, settings=dataclasses.replace(r.settings, steps=v))),
    "guidance": (float, lambda r, v: dataclasses.replace(r, settings=dataclasses.replace(r.settings, guidance_scale=v))),
    "size": (int, lambda r, v: dataclasses.replace(r, size=v)),
    "max_frames": (int, lambda r, v: dataclasses.replace(r, max_frames=v)),
    "paste_back": (_as_bool, lambda r, v: dataclasses.replace(r, paste_back=v)),
    "faces": (_face_selection, lambda r, v: dataclasses.replace(r, faces=v)),
    "performer": (parse_performer, lambda r, v: dataclasses.replace(r, performer=v)),
}
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, *_JOB_SETTINGS)


def job_from_row(row: dict, where: str, folder: Path, base: AnimateRequest) -> BatchJob:
    """One manifest row (column -> text or JSON value) -> its job; ``where`` names the row in errors."""
    unknown = sorted(set(row) - set(KNOWN_COLUMNS))
    if unknown:
        raise ManifestError(f"{where}: unknown column(s) {', '.join(unknown)}; known: {', '.join(KNOWN_COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if row.get(c) in (None, "")]
    if missing:
        raise ManifestError(f"{where}: no {', '.join(missing)}")
    paths = {c: folder / Path(str(row[c])).expanduser() for c in REQUIRED_COLUMNS}
    request = dataclasses.replace(base, source=paths["portrait"], driving=paths["driving"], output=paths["output"])
    for column, (parse, apply) in _JOB_SETTINGS.items():
        value = row.get(column)
        if value is None or value == "":
            continue  # an empty cell keeps the command line's setting
        try:
            request = apply(request, parse(str(value)))
        except ValueError as error:
            raise ManifestError(f"{where}: {column}: {error}") from None
    return BatchJob(where, request)


def read_manifest(path: Path, base: AnimateRequest) -> list[BatchJob]:
    """A ``.csv`` (header row first) or ``.jsonl`` manifest -> its jobs, in row order."""
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    folder = path.parent
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as file:
            rows = [(f"{path.name} line {n}", row) for n, row in enumerate(csv.DictReader(file), start=2)]
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{where}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{where}: expected a JSON object with portrait, driving and output")
            rows.append((where, row))
    else:
        raise ManifestError(f"{path.name}: a manifest is a .csv or a .jsonl file")
    jobs = [job_from_row(row, where, folder, base) for where, row in rows]
    if not jobs:
        raise ManifestError(f"{path.name} holds no jobs")
    return check_distinct_outputs(jobs)


def _files_in(folder: Path, suffixes: set[str], what: str) -> list[Path]:
    if not folder.is_dir():
        raise ManifestError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))
    if not files:
        raise ManifestError(f"no {what} files in {folder} (looked for {', '.join(sorted(suffixes))})")
    return files


def jobs_from_folders(portraits: Path, driving: Path, output: Path, pairing: str, base: AnimateRequest) -> list[BatchJob]:
    """``pairing`` "all": every portrait with every driving video; "zip": the n-th with the n-th
    (in name order). Outputs are ``OUTPUT/<portrait>__<driving>.mp4``."""
    images = _files_in(portraits, IMAGE_SUFFIXES, "portrait")
    videos = _files_in(driving, VIDEO_SUFFIXES | {MOTION_SUFFIX}, "driving video or motion")
    if not output.is_dir():
        raise ManifestError(f"output folder {output} does not exist")
    if pairing == "zip":
        if len(images) != len(videos):
            raise ManifestError(f"--pairs zip needs as many portraits as driving videos: {len(images)} and {len(videos)}")
        pairs = list(zip(images, videos))
    else:
        pairs = [(image, video) for image in images for video in videos]
    jobs = [
        BatchJob(f"{image.name} + {video.name}",
                 dataclasses.replace(base, source=image, driving=video, output=output / f"{image.stem}__{video.stem}.mp4"))
        for image, video in pairs
    ]
    return check_distinct_outputs(jobs)


def check_distinct_outputs(jobs: list[BatchJob]) -> list[BatchJob]:
    seen: dict[Path, str] = {}
    for job in jobs:
        output = job.request.output.resolve()
        if output in seen:
            raise ManifestError(f"{job.label} writes {job.request.output}, as {seen[output]} does")
        seen[output] = job.label
    return jobs


def _job_inputs(request: AnimateRequest) -> list[Path]:
    return [request.source, *request.driving_videos] + ([request.audio_from] if request.audio_from else [])


def finished_result(job: BatchJob) -> Optional[JobResult]:
    """A "skipped" result when the job's output is already there and reads as a video (and is
    not one of its inputs), else None. Outputs appear only when complete, so one that exists is a
    finished job of an earlier run. With ``--overwrite`` nothing is skipped."""
    output = job.request.output
    if job.request.overwrite or not output.is_file() or any(same_file(output, given) for given in _job_inputs(job.request)):
        return None
    try:
        frames = probe_video(output).frame_count
    except MediaError:
        return None  # not a video: refused_result says what to do
    return JobResult(job.label, SKIPPED, str(output), frames)


def refused_result(job: BatchJob) -> Optional[JobResult]:
    """A "failed" result for a job that cannot be run, found before any model is loaded or any
    worker is busy with it (a batch whose only job left is a bad one loads nothing): its output is
    one of its inputs, or a file that is not a video from an earlier run of the batch (replaced
    only with ``--overwrite``), or its driving video cannot be read."""
    started = time.monotonic()
    request = job.request
    try:
        if any(same_file(request.output, given) for given in _job_inputs(request)):
            raise MediaError(f"{request.output} is also an input of this job: write the animation to another file")
        if request.output.exists() and not request.overwrite:
            raise MediaError(f"{request.output} exists and is not a video this batch wrote; pass --overwrite to replace it")
        load_motion(request.driving) if is_motion_file(request.driving) else probe_video(request.driving)
    except Exception as error:  # as in run_job: the error is the job's result
        return JobResult(job.label, FAILED, str(request.output), None, time.monotonic() - started, one_line(error))
    return None


def check_report_path(report: Path, manifest: Optional[Path], jobs: Iterable[BatchJob], overwrite: bool) -> None:
    """Refuse a report that would replace the manifest, a job's file or a file that is no report."""
    named = ([manifest] if manifest else []) + [path for job in jobs for path in (*_job_inputs(job.request), job.request.output)]
    if any(same_file(report, path) for path in named):
        raise ManifestError(f"the report {report} would replace a file of this batch (the manifest, an input or an output)")
    if report.exists() and not overwrite and not _is_report(report):
        raise ManifestError(f"{report} exists and is not a batch report; pass --overwrite to replace it, or choose --report")


def _is_report(path: Path) -> bool:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(document, dict) and set(document) == {"summary", "jobs"}


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return text if isinstance(error, MediaError) else f"{type(error).__name__}: {text}"


def run_job(job: BatchJob, models: LoadedModels, progress: Optional[ProgressFn] = None) -> JobResult:
    """Render one job with loaded models; any failure becomes a "failed" result, not an exception."""
    started = time.monotonic()
    output = job.request.output
    # A hidden partial file of a run that was killed (a crash, a lost Ray worker) is of no use.
    remove_partial_files(output)
    request = job.request
    try:
        animate_files(request, progress, models)
        frames = probe_video(output).frame_count
    except Exception as error:  # the batch goes on: the error is the job's result
        return JobResult(job.label, FAILED, str(output), None, time.monotonic() - started, one_line(error))
    return JobResult(job.label, DONE, str(output), frames, time.monotonic() - started)


ResultCallback = Callable[[JobResult], None]


def run_locally(
    jobs: list[BatchJob],
    on_result: Optional[ResultCallback] = None,
    progress: Optional[ProgressFn] = None,
) -> list[JobResult]:
    """Run the jobs in turn in this process, loading the models once (only if a job needs them).
    All jobs share the weights, device and dtype of the first one."""
    results: list[JobResult] = []
    models: Optional[LoadedModels] = None
    for job in jobs:
        result = finished_result(job) or refused_result(job)
        if result is None:
            models = models or load_all_models(job.request)
            result = run_job(job, models, progress)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def summary(results: Iterable[JobResult]) -> str:
    results = list(results)
    counts = {status: sum(r.status == status for r in results) for status in (DONE, SKIPPED, FAILED)}
    return f"{len(results)} jobs: " + ", ".join(f"{n} {status}" for status, n in counts.items())


def report_table(results: list[JobResult]) -> str:
    """The report as a plain-text table, one job a line."""
    header = ("job", "status", "frames", "seconds", "output", "error")
    rows = [
        (r.label, r.status, "" if r.frames is None else str(r.frames), f"{r.seconds:.1f}", r.output, r.error or "")
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in (header, *rows)]
    return "\n".join(line.rstrip() for line in lines)


def write_report(results: list[JobResult], path: Path) -> None:
    """The JSON report, written atomically (a crash never leaves half a report)."""
    document = {"summary": summary(results), "jobs": [dataclasses.asdict(r) for r in results]}
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".partial.json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2)
            file.write("\n")
        publish(Path(temp), path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
