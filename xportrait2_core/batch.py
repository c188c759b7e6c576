"""``xportrait2 batch``: many clips in one command, resumable, with one report.

Jobs come from a manifest (CSV with a header row, or JSON Lines), one job a row: ``portrait``,
``driving`` and ``output`` (relative paths are relative to the manifest's folder), and optionally
``seed``, ``steps``, ``guidance``, ``size``, ``max_frames``, ``paste_back``, ``faces`` and
``performer`` overriding the command line's settings for that job. Or from two folders: every portrait with every driving
video, or the n-th with the n-th.

Beside each finished video the batch records what made it (:mod:`~xportrait2_core.render_record`):
running the same batch again skips a job whose video is there, made exactly as it would be now
(outputs only appear when complete, so this finishes what an interrupted run left), makes again,
saying why, one this batch made with other settings, inputs or weights, and fails, keeping it, a job
whose output holds a file it did not make. A job that fails is recorded with its one-line error and
the batch goes on. Where the jobs run is up to the runner: in this process
(:func:`run_locally`, the models loaded once) or on a Ray cluster (:mod:`xportrait2_core.farm`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from .animate import AnimateRequest, LoadedModels, animate_files, load_all_models, same_file
from .face_drives import parse_performer
from .finished_files import why_unwritable, write_text_atomically
from .media.images import VIDEO_SUFFIXES, MediaError
from .media.portrait_faces import parse_face_selection
from .media.video_reader import probe_video
from .media.video_writer import remove_partial_files
from .motion.file import SUFFIX as MOTION_SUFFIX
from .motion.file import is_motion_file, load_motion
from .progress import ProgressFn
from .render_record import made_with, record_path, verdict, write_record

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
    note: Optional[str] = None  # why a video of an earlier run was made again


@dataclass(frozen=True)
class PlannedJob:
    """A job to render (see :func:`plan_job`): ``made_with`` is recorded beside its video once that
    is finished; ``note`` says why a video of an earlier run is made again."""

    job: BatchJob
    made_with: dict
    note: Optional[str] = None


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
    if None in row:  # csv puts the cells beyond the header's columns there
        raise ManifestError(f"{where}: more cells than the header has columns")
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


def check_header(columns: list[str], where: str) -> None:
    """A CSV header's columns, checked once, so that a typo in it is reported on its own line."""
    unknown = [c if c.strip() else repr(c) for c in columns if c not in KNOWN_COLUMNS]
    if unknown:
        raise ManifestError(f"{where}: unknown column(s) {', '.join(unknown)}; known: {', '.join(KNOWN_COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(f"{where}: no {', '.join(missing)} column")


def read_manifest(path: Path, base: AnimateRequest) -> list[BatchJob]:
    """A ``.csv`` (header row first) or ``.jsonl`` manifest -> its jobs, in row order."""
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    folder = path.parent
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            check_header(reader.fieldnames or [], f"{path.name} line 1 (the header)")
            # line_num: the row's last line, blank lines and quoted line breaks counted
            rows = [(f"{path.name} line {reader.line_num}", row) for row in reader]
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


def distinct_names(files: list[Path]) -> dict[Path, str]:
    """Each file's name without its extension, or with it where another file has the same stem
    (``drive.mov``, ``drive.webm`` -> ``drive_mov``, ``drive_webm``), so that outputs stay apart."""
    stems = Counter(file.stem for file in files)
    return {file: file.stem if stems[file.stem] == 1 else f"{file.stem}_{file.suffix[1:]}" for file in files}


def jobs_from_folders(portraits: Path, driving: Path, output: Path, pairing: str, base: AnimateRequest) -> list[BatchJob]:
    """``pairing`` "all": every portrait with every driving video; "zip": the n-th with the n-th
    (in name order). Outputs are ``OUTPUT/<portrait>__<driving>.mp4`` (names from :func:`distinct_names`)."""
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
    names = distinct_names(images) | distinct_names(videos)
    jobs = [
        BatchJob(f"{image.name} + {video.name}",
                 dataclasses.replace(base, source=image, driving=video, output=output / f"{names[image]}__{names[video]}.mp4"))
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


def plan_job(job: BatchJob) -> JobResult | PlannedJob:
    """What to do with a job, found before any model is loaded or any worker is busy with it (a
    batch whose only job left is a bad one loads nothing): "skipped" when its video is there, made
    exactly as it would be now; "failed" when it cannot run (its output is one of its inputs or a
    folder, an input cannot be read, or a file this batch did not make is where its video goes,
    which is kept unless ``--overwrite``); else the job to render, replacing (and saying so) a
    video this batch made with other settings, inputs or weights."""
    started = time.monotonic()
    request, output = job.request, job.request.output
    try:
        if any(same_file(output, given) for given in _job_inputs(request)):
            raise MediaError(f"{output} is also an input of this job: write the animation to another file")
        if output.is_dir():
            raise MediaError(f"{output} is a folder: a job's output is the video file to write")
        load_motion(request.driving) if is_motion_file(request.driving) else probe_video(request.driving)
        recipe = made_with(request)
        if request.overwrite or not output.exists():
            return PlannedJob(job, recipe)
        found = verdict(output, recipe)
        if found.action == "foreign":
            raise MediaError(f"{output} exists and is not a video this batch made ({found.why}); pass --overwrite to replace it")
    except Exception as error:  # as in run_job: the error is the job's result
        return JobResult(job.label, FAILED, str(output), None, time.monotonic() - started, one_line(error))
    if found.action == "skip":
        return JobResult(job.label, SKIPPED, str(output), found.frames)
    note = f"made again, what made {output.name} changed: {found.why}"
    return PlannedJob(dataclasses.replace(job, request=dataclasses.replace(request, overwrite=True)), recipe, note)


def check_report_path(report: Path, manifest: Optional[Path], jobs: Iterable[BatchJob], overwrite: bool) -> None:
    """Refuse a report that is a folder, would replace the manifest, a job's file or a file that is
    no report, or cannot be written (a read-only folder, a full disk)."""
    if report.is_dir():
        raise ManifestError(f"the report {report} is a folder: give the report's file name, e.g. --report {report / 'batch_report.json'}")
    named = ([manifest] if manifest else []) + [path for job in jobs for path in (*_job_inputs(job.request), job.request.output)]
    if any(same_file(report, path) for path in named):
        raise ManifestError(f"the report {report} would replace a file of this batch (the manifest, an input or an output)")
    if report.exists() and not overwrite and not _is_report(report):
        raise ManifestError(f"{report} exists and is not a batch report; pass --overwrite to replace it, or choose --report")
    reason = why_unwritable(report.parent)  # found now, not once every job has run
    if reason:
        raise ManifestError(f"cannot write the report {report}: {reason} (folder {report.parent})")


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


def run_job(planned: PlannedJob, models: LoadedModels, progress: Optional[ProgressFn] = None) -> JobResult:
    """Render a planned job with loaded models and record what made its video beside it; any
    failure becomes a "failed" result, not an exception."""
    started = time.monotonic()
    job, note = planned.job, planned.note
    output = job.request.output
    # A hidden partial file of a run that was killed (a crash, a lost Ray worker) is of no use.
    remove_partial_files(output)
    try:
        animate_files(job.request, progress, models)
        frames = probe_video(output).frame_count
    except Exception as error:  # the batch goes on: the error is the job's result
        return JobResult(job.label, FAILED, str(output), None, time.monotonic() - started, one_line(error), note)
    try:
        write_record(output, planned.made_with, frames)
    except OSError as error:
        error_line = (f"{output} was written, but not {record_path(output).name} beside it ({error.strerror or error}): "
                      "a rerun takes it for a file this batch did not make (pass --overwrite then)")
        return JobResult(job.label, FAILED, str(output), frames, time.monotonic() - started, error_line, note)
    return JobResult(job.label, DONE, str(output), frames, time.monotonic() - started, note=note)


ResultCallback = Callable[[JobResult], None]
NoteCallback = Callable[[str, str], None]  # (job label, note): a video made again, said before it is


def plan_jobs(jobs: list[BatchJob], on_note: Optional[NoteCallback] = None) -> Iterator[JobResult | PlannedJob]:
    """:func:`plan_job` of each job in turn, saying (``on_note``) which videos are made again and why."""
    for job in jobs:
        planned = plan_job(job)
        if on_note is not None and isinstance(planned, PlannedJob) and planned.note:
            on_note(job.label, planned.note)
        yield planned


def run_locally(
    jobs: list[BatchJob],
    on_result: Optional[ResultCallback] = None,
    progress: Optional[ProgressFn] = None,
    on_note: Optional[NoteCallback] = None,
) -> list[JobResult]:
    """Run the jobs in turn in this process, loading the models once (only if a job needs them).
    All jobs share the weights, device and dtype of the first one."""
    results: list[JobResult] = []
    models: Optional[LoadedModels] = None
    for planned in plan_jobs(jobs, on_note):  # each job planned when its turn comes
        if isinstance(planned, PlannedJob):
            models = models or load_all_models(planned.job.request)
            result = run_job(planned, models, progress)
        else:
            result = planned
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
    write_text_atomically(path, json.dumps(document, indent=2) + "\n")
