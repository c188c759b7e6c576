"""Beyond one GPU, on a Ray cluster (the optional ``farm`` extra: ``pip install .[farm]``).

Two uses, both with workers (Ray actors) that load the models once and keep them:

* :func:`run_batch_on_ray`: the jobs of ``xportrait2 batch``, one job at a time per worker. A
  worker that dies mid-job (killed, out of memory, node lost) costs that job's partial file, which
  is removed, and the job is run again on another worker, a bounded number of times.
* :class:`RayWindowPool`: one long take on several workers. Sampling couples all frames at every
  step, so the take is not sliced; instead each step's context windows are shared out. This
  process keeps the latents and does the averaging, guidance and DDIM step of
  :mod:`~xportrait2_core.sampling` (the same code as one process, summing predictions in window
  order); the workers hold the denoiser and the run's conditioning, put once into the object
  store, and receive only the step's latents and their share of windows.

Ray is imported only here and only when used, so the engine, the CLI and the node pack work
without it. Paths (inputs, outputs, weights) must be on storage every node sees.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from . import ray_auth
from .animate import AnimateRequest, load_all_models, pick_device
from .batch import FAILED, BatchJob, JobResult, NoteCallback, PlannedJob, ResultCallback, one_line, plan_jobs, run_job
from .compiled_denoiser import compile_denoiser
from .kernels.fast import switch_on_fast_kernels
from .media.video_writer import remove_partial_files
from .sampling import Conditioning, WindowPredictions, predict_windows
from .weights.loading import check_weight_files, load_denoiser

INSTALL_HINT = "Ray is not installed: pip install 'comfyui-xportrait2[farm]' (or pip install '.[farm]' in a checkout)"
DEFAULT_ATTEMPTS = 3
STOP_TIMEOUT = 30.0  # seconds to wait for killed workers to be gone
MINIMUM_RAY = (2, 52)  # the first release with token authentication


class FarmError(RuntimeError):
    """Ray missing or a cluster that cannot be used; one line saying what to do."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise FarmError(INSTALL_HINT) from None
    version = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    if version < MINIMUM_RAY:
        raise FarmError(
            f"Ray {ray.__version__} has no token authentication, which xportrait2 needs (a Ray cluster runs any code "
            f"that reaches it): pip install 'ray>={'.'.join(map(str, MINIMUM_RAY))}'"
        )
    return ray


@contextlib.contextmanager
def ray_cluster(address: Optional[str]) -> Iterator:
    """Ray connected to ``address`` ("auto", "host:port"), or to a new single-machine Ray on this
    computer's loopback address when None, always with token authentication (:mod:`ray_auth`);
    shut down again only if this call connected it."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    saved = {name: os.environ.get(name) for name in (ray_auth.MODE, ray_auth.TOKEN_PATH)}
    try:
        try:
            source = ray_auth.require_token_auth(new_cluster=not address)
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
        except ray_auth.RayAuthError as error:
            raise FarmError(str(error)) from None
        except Exception as error:
            if ray_auth.refused(error):
                raise FarmError(ray_auth.refusal_message(address or "this computer", source)) from None
            if not isinstance(error, (ConnectionError, RuntimeError, ValueError)):
                raise
            raise FarmError(f"cannot start or reach Ray at {address or 'this computer'}: {one_line(error)}") from None
        try:
            if address:
                ray_auth.warn_if_open(ray.get_runtime_context().gcs_address)
            yield ray
        finally:
            ray.shutdown()
    finally:
        for name, value in saved.items():  # this process's own settings come back
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def worker_slots(ray, requested: Optional[int]) -> tuple[int, dict]:
    """How many workers and the resources of each: one per GPU (``num_gpus=1``) on a cluster with
    GPUs, else one per CPU slot (``num_cpus=1``); ``requested`` caps the count."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    slots, options = (gpus, {"num_gpus": 1}) if gpus else (cpus, {"num_cpus": 1})
    if slots < 1:
        raise FarmError("the Ray cluster has no GPU and no CPU to run workers on")
    if requested is not None:
        if requested < 1:
            raise FarmError(f"--workers must be at least 1, got {requested}")
        if requested > slots:
            kind = "GPUs" if gpus else "CPUs"
            raise FarmError(f"--workers {requested}: the Ray cluster has {slots} {kind}")
        slots = requested
    return slots, options


class BatchWorker:
    """A Ray actor rendering batch jobs with the models it loaded once."""

    def __init__(self, request: AnimateRequest):
        self.models = load_all_models(request)

    def run(self, planned: PlannedJob) -> JobResult:
        return run_job(planned, self.models)


def run_batch_on_ray(
    jobs: list[BatchJob],
    address: Optional[str] = None,
    workers: Optional[int] = None,
    attempts: int = DEFAULT_ATTEMPTS,
    on_result: Optional[ResultCallback] = None,
    on_note: Optional[NoteCallback] = None,
) -> list[JobResult]:
    """Run the jobs on Ray workers, each taking the next job when it is free; results in job order.

    A job whose worker dies is run again on a fresh worker, at most ``attempts`` times in all."""
    results: dict[int, JobResult] = {}

    def record(index: int, result: JobResult) -> None:
        results[index] = result
        if on_result is not None:
            on_result(result)

    queue: deque[tuple[int, int]] = deque()  # (job index, attempts so far)
    planned: dict[int, PlannedJob] = {}
    # In this process, as locally: the same rule skips, refuses or makes a job again.
    for index, plan in enumerate(plan_jobs(jobs, on_note)):
        if isinstance(plan, PlannedJob):
            planned[index] = plan
            queue.append((index, 0))
        else:
            record(index, plan)
    if not queue:
        return [results[i] for i in range(len(jobs))]
    check_weight_files(jobs[queue[0][0]].request.weights)
    with ray_cluster(address) as ray:
        count, options = worker_slots(ray, workers)
        worker_class = ray.remote(**options)(BatchWorker)
        base_request = jobs[queue[0][0]].request

        def new_worker():
            return worker_class.remote(base_request)

        idle = [new_worker() for _ in range(min(count, len(queue)))]
        running: dict = {}  # task ref -> (worker, job index, attempts so far)
        try:
            _run_queue(ray, planned, queue, idle, running, new_worker, attempts, record)
        except BaseException:
            # Ctrl-C or a lost connection: stop the busy workers, then take away their partial files.
            for worker, _, _ in running.values():
                ray.kill(worker)
            if running:
                ray.wait(list(running), num_returns=len(running), timeout=STOP_TIMEOUT)
            for _, index, _ in running.values():
                remove_partial_files(jobs[index].request.output)
            raise
    return [results[i] for i in range(len(jobs))]


def _run_queue(ray, planned, queue, idle, running, new_worker, attempts, record) -> None:
    """Hand the queued jobs to idle workers until all are recorded; a dead worker's job goes back
    to the front of the queue (at most ``attempts`` runs in all) and a fresh worker replaces it."""
    while queue or running:
        while idle and queue:
            worker = idle.pop()
            index, tries = queue.popleft()
            running[worker.run.remote(planned[index])] = (worker, index, tries + 1)
        [done], _ = ray.wait(list(running), num_returns=1)
        worker, index, tries = running.pop(done)
        try:
            record(index, ray.get(done))
            idle.append(worker)
        except ray.exceptions.RayActorError as death:
            job = planned[index].job
            remove_partial_files(job.request.output)
            if tries < attempts:
                queue.appendleft((index, tries))
            else:
                error = f"its Ray worker died {tries} times; last: {one_line(death)}"
                record(index, JobResult(job.label, FAILED, str(job.request.output), error=error, note=planned[index].note))
            idle.append(new_worker())


def conditioning_on(conditioning: Conditioning, device: torch.device | str) -> Conditioning:
    return Conditioning(
        conditioning.motion_tokens.to(device),
        conditioning.negative_motion_tokens.to(device),
        conditioning.image_embeds.to(device),
        conditioning.reference.to(device),
    )


class WindowWorker:
    """A Ray actor holding the denoiser and one run's conditioning; predicts its share of windows."""

    def __init__(self, weights: str, dtype: torch.dtype, compile: bool = False, fast: bool = False):
        # Ray hands a GPU worker its GPU as the only visible one.
        self.device = pick_device(None)
        self.denoiser = load_denoiser(Path(weights), self.device, dtype)
        if fast:
            switch_on_fast_kernels(self.denoiser, self.device)
        if compile:
            compile_denoiser(self.denoiser)
        self.conditioning: Optional[Conditioning] = None

    def bind(self, conditioning: Conditioning) -> None:
        self.conditioning = conditioning_on(conditioning, self.device)

    def predict(
        self, latents: torch.Tensor, timestep: int, windows: Sequence[Sequence[int]], guided: bool
    ) -> tuple[list[torch.Tensor], float]:
        """This share's predictions (on the CPU, for the object store) and the seconds they took."""
        started = time.perf_counter()
        with torch.no_grad():
            predictions = predict_windows(
                self.denoiser, self.conditioning, guided, latents.to(self.device), timestep, windows
            )
            cpu = [p.cpu() for p in predictions]
        return cpu, time.perf_counter() - started


def contiguous_shares(windows: Sequence[Sequence[int]], parts: int) -> list[list[Sequence[int]]]:
    """``windows`` cut into at most ``parts`` runs of consecutive windows, sizes differing by at most one."""
    parts = min(parts, len(windows))
    size, extra = divmod(len(windows), parts)
    shares, start = [], 0
    for part in range(parts):
        end = start + size + (part < extra)
        shares.append(list(windows[start:end]))
        start = end
    return shares


@dataclass
class StepTiming:
    """One sampling step on the pool: its wall time, the slowest worker's denoiser time, and the
    bytes sent (latents to each worker) and received (predictions)."""

    wall_seconds: float
    compute_seconds: float
    bytes_out: int
    bytes_back: int


@dataclass
class RayWindowPool:
    """Workers holding the denoiser, as a ``window_predictor`` of :meth:`XPortrait2Pipeline.sample`
    / :func:`~xportrait2_core.animate.animate_files` (use inside :func:`ray_cluster`)::

        with ray_cluster(None), RayWindowPool.start(weights, workers=4, dtype=pipeline.dtype) as pool:
            latents = pipeline.sample(..., window_predictor=pool)

    The latents equal those of one process with the same seed (the same windows, the same
    per-window arithmetic, summed in the same order)."""

    ray: object
    workers: list
    timings: list[StepTiming] = field(default_factory=list)

    @classmethod
    def start(
        cls, weights: Path, workers: Optional[int] = None, dtype: torch.dtype = torch.float32, compile: bool = False,
        fast: bool = False,
    ) -> "RayWindowPool":
        """``compile``: each worker compiles its denoiser (:mod:`~xportrait2_core.compiled_denoiser`);
        ``fast``: each switches on the fused kernels (:mod:`~xportrait2_core.kernels.fast`)."""
        ray = import_ray()
        check_weight_files(weights)
        count, options = worker_slots(ray, workers)
        worker_class = ray.remote(**options)(WindowWorker)
        return cls(ray, [worker_class.remote(str(weights), dtype, compile, fast) for _ in range(count)])

    def __enter__(self) -> "RayWindowPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []

    def __call__(self, conditioning: Conditioning, guided: bool) -> WindowPredictions:
        """Put the run's conditioning into the object store once, have every worker take it, and
        return the per-step predictor."""
        ray = self.ray
        stored = ray.put(conditioning_on(conditioning, "cpu"))
        ray.get([worker.bind.remote(stored) for worker in self.workers])

        def predictions(latents: torch.Tensor, timestep: int, windows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
            started = time.perf_counter()
            shares = contiguous_shares(windows, len(self.workers))
            sent = ray.put(latents.cpu())
            answers = ray.get(
                [worker.predict.remote(sent, timestep, share, guided) for worker, share in zip(self.workers, shares)]
            )
            gathered = [prediction for share_predictions, _ in answers for prediction in share_predictions]
            self.timings.append(StepTiming(
                time.perf_counter() - started,
                max(seconds for _, seconds in answers),
                latents.numel() * latents.element_size() * len(shares),
                sum(p.numel() * p.element_size() for p in gathered),
            ))
            return gathered

        return predictions
