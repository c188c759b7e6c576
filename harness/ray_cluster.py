"""A throw-away Ray cluster on this computer's loopback address, for tests and benchmarks.

``ray start --head --block`` runs in the foreground as a child of this process, every port it
opens is a free one picked here, there is no dashboard, and stopping it ends exactly the
processes it started (found by process id, never by name)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil

LOOPBACK = "127.0.0.1"
WORKER_PORTS = 32
START_TIMEOUT = 120.0
START_ATTEMPTS = 3


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on the loopback address right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _ray_executable() -> str:
    beside_python = Path(sys.executable).parent / "ray"
    return str(beside_python) if beside_python.is_file() else "ray"


def _wait_until_up(address: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if "Ray runtime started" in log.read_text():
            return
        time.sleep(0.5)
    raise RuntimeError(f"Ray at {address} did not start within {START_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}")


def stop_process_tree(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the ``ray start --block`` process (it stops its cluster), then SIGKILL whatever of
    its process tree is still there; returns when all of it is gone."""
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    _, alive = psutil.wait_procs(alive, timeout=grace)
    if alive:
        raise RuntimeError(f"Ray processes {[p.pid for p in alive]} did not stop")


@contextlib.contextmanager
def loopback_ray_cluster(num_cpus: int = 2) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start a one-node Ray on 127.0.0.1 with ``num_cpus`` CPU slots and no GPU; yields its
    address and the ``ray start`` process (whose descendants are the cluster's processes)."""
    (gcs, object_manager, node_manager, agent_listen, agent_grpc, runtime_env, metrics,
     *workers) = free_ports(7 + WORKER_PORTS)
    # A short folder: Ray's Unix sockets live under it, and their paths are limited to ~100 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="xp2ray-", dir="/tmp" if os.path.isdir("/tmp") else None))
    log = temp_dir / "ray-start.log"
    address = f"{LOOPBACK}:{gcs}"
    command = [
        _ray_executable(), "start", "--head", "--block", "--disable-usage-stats",
        f"--node-ip-address={LOOPBACK}", f"--port={gcs}", f"--num-cpus={num_cpus}", "--num-gpus=0",
        "--include-dashboard=false", f"--temp-dir={temp_dir}",
        f"--object-manager-port={object_manager}", f"--node-manager-port={node_manager}",
        f"--dashboard-agent-listen-port={agent_listen}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}", f"--worker-port-list={','.join(map(str, workers))}",
    ]
    # A busy machine can be slow to register the raylet: the wait Ray suggests raising for that.
    environment = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_raylet_start_wait_time_s="120",
                       PYTHONUNBUFFERED="1")  # the log is read for "Ray runtime started" while it runs
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            with log.open("w") as output:
                process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
            try:
                _wait_until_up(address, process, log)
                break
            except RuntimeError:
                stop_process_tree(process)
                # `ray start` gives its raylet a fixed 30 s to register, which a busy machine can miss.
                if attempt == START_ATTEMPTS or "timed out during startup" not in log.read_text():
                    raise
        try:
            yield address, process
        finally:
            stop_process_tree(process)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
