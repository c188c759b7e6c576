"""The command line of many clips and many GPUs: ``xportrait2 batch`` and ``animate --ray``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .animate import AnimateRequest, animate_files, check_request, pick_device
from .batch import (
    FAILED,
    JobResult,
    check_report_path,
    jobs_from_folders,
    read_manifest,
    report_table,
    run_locally,
    summary,
    write_report,
)
from .render_options import ProgressBars, UsageError, request_from_args
from .farm import FarmError, RayWindowPool, ray_cluster, run_batch_on_ray
from .media.face_detector import find_yunet_weights
from .weights.loading import check_weight_files, default_dtype

REPORT_NAME = "batch_report.json"


class BatchBars:
    """A bar over the jobs and, for jobs run in this process, the stage bars of the current one."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.jobs = tqdm(total=total, desc="jobs", unit=" jobs")
        self.stages = ProgressBars()

    def stage(self, stage: str, done: int, total: int) -> None:
        self.stages(stage, done, total)

    def note(self, label: str, note: str) -> None:
        self._tqdm.write(f"{label}: {note}")

    def job_finished(self, result: JobResult) -> None:
        self.stages.close()
        self.stages = ProgressBars()
        if result.status == FAILED:
            self._tqdm.write(f"{result.label}: failed: {result.error}")
        self.jobs.update(1)

    def close(self) -> None:
        self.stages.close()
        self.jobs.close()


def _jobs_and_report(args: argparse.Namespace, base: AnimateRequest):
    inputs = [Path(item) for item in args.inputs]
    if len(inputs) == 1:
        if args.output:
            raise UsageError("-o goes with two folders; a manifest names each job's output")
        jobs = read_manifest(inputs[0], base)
        report = inputs[0].with_suffix(".report.json")
    elif len(inputs) == 2:
        if not args.output:
            raise UsageError("with PORTRAITS_DIR DRIVING_DIR, give the output folder: -o OUT_DIR")
        jobs = jobs_from_folders(inputs[0], inputs[1], Path(args.output), args.pairs, base)
        report = Path(args.output) / REPORT_NAME
    else:
        raise UsageError("give a manifest (.csv or .jsonl), or a portraits folder and a driving-videos folder")
    report = Path(args.report) if args.report else report
    if not report.parent.is_dir():
        raise UsageError(f"cannot write the report {report}: folder {report.parent} does not exist")
    check_report_path(report, inputs[0] if len(inputs) == 1 else None, jobs, args.overwrite)
    return jobs, report


def batch(args: argparse.Namespace) -> int:
    # Each job's files come from the manifest or the folders; these are placeholders.
    base = request_from_args(args, "", [], "")
    jobs, report = _jobs_and_report(args, base)
    if args.ray is None and args.workers is not None:
        raise UsageError("--workers is the number of Ray workers: give it with --ray")
    if args.attempts < 1:
        raise UsageError(f"--attempts must be at least 1, got {args.attempts}")
    # Every job's record of what made it names the weights: missing ones are one line, not one a job.
    check_weight_files(base.weights)
    find_yunet_weights(base.face_detector, [base.weights])
    bars = BatchBars(len(jobs))
    try:
        if args.ray is None:
            results = run_locally(jobs, on_result=bars.job_finished, progress=bars.stage, on_note=bars.note)
        else:
            results = run_batch_on_ray(jobs, args.ray or None, args.workers, args.attempts, bars.job_finished, bars.note)
    except FarmError as error:
        raise UsageError(str(error)) from None
    except KeyboardInterrupt:
        bars.close()
        print("xportrait2: interrupted; finished videos are kept, run the same command again to do the rest")
        return 130
    bars.close()
    print(report_table(results))
    try:
        write_report(results, report)
    except OSError as error:  # the disk filled while the jobs ran: the table above is the report
        print(f"xportrait2: {summary(results)}; the report could not be written to {report} ({error.strerror or error}): "
              "the table above holds it", file=sys.stderr)
        return 1
    print(f"{summary(results)}; report: {report}")
    return 1 if any(result.status == FAILED for result in results) else 0


def animate_on_ray(args: argparse.Namespace, request: AnimateRequest, bars: ProgressBars) -> int:
    """One take with each sampling step's windows shared among Ray workers."""
    check_request(request)
    dtype = request.dtype or default_dtype(pick_device(request.device))
    try:
        with ray_cluster(args.ray or None), RayWindowPool.start(
            request.weights, args.workers, dtype, request.compile, request.fast
        ) as pool:
            workers = len(pool.workers)
            output = animate_files(request, progress=bars, window_predictor=pool)
    except FarmError as error:
        raise UsageError(str(error)) from None
    finally:
        bars.close()
    print(f"wrote {output} (sampling shared among {workers} Ray workers)")
    return 0
