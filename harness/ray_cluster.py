"""A throw-away Ray cluster reachable from this computer only, for tests and benchmarks.

Ray 2.60 has no setting for the address its servers bind: with ``--node-ip-address=127.0.0.1``
the GCS server and the raylet still listen on every interface (``*:port``) and the runtime-env
agent on the machine's own address. So the cluster runs in a network namespace of its own whose
only interface is loopback (:func:`loopback_only_network`; Linux, and root or CAP_SYS_ADMIN):
whatever address a Ray process binds there, nothing outside this computer's loopback can reach it
(there, having no other address, they bind 127.0.0.1, which the tests check as well).
The process that starts the cluster (the test or benchmark, the driver) enters that namespace
too, and every process it starts meanwhile (``ray start``, the command line under test) is born
in it. :func:`listening_sockets` and :func:`reachable_from_outside` check it.

``ray start --head --block`` runs in the foreground as a child of this process, every port it
opens is a free one picked here, there is no dashboard, and stopping it ends exactly the
processes it started (found by process id, never by name). It has token authentication with a
token of its own (``token_path``, in its temporary folder), so no token file of this computer's
history (``~/.ray/auth_token``) decides anything: while the cluster runs, this process (and what
it starts) finds that token through ``RAY_AUTH_TOKEN_PATH``. ``authentication=False`` starts a
cluster without, to test what the pack says of such a cluster."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

LOOPBACK = "127.0.0.1"
WORKER_PORTS = 32
START_TIMEOUT = 120.0
START_ATTEMPTS = 3
CLONE_NEWNET = 0x40000000  # <sched.h>
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1  # <linux/sockios.h>, <net/if.h>


def _libc_call(name: str, *args) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{name}: {os.strerror(error)} (a loopback-only network namespace needs Linux, "
                             "and root or CAP_SYS_ADMIN)")


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        # struct ifreq: the interface name (16 bytes), then a union of 24 whose first field is the flags.
        answer = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh22x", b"lo", 0))
        flags = struct.unpack("16sh22x", answer)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def network_namespace(pid: int | str = "thread-self") -> str:
    """The network namespace of a process (or of this thread), as ``net:[inode]``."""
    return os.readlink(f"/proc/{pid}/ns/net")


@dataclass(frozen=True)
class LoopbackNetwork:
    namespace: str  # the loopback-only one, ``net:[inode]``
    outside: str  # the one this thread was in before
    inside_fd: int  # open on each, to step out and back in (see reachable_from_outside)
    outside_fd: int


@contextlib.contextmanager
def loopback_only_network() -> Iterator[LoopbackNetwork]:
    """Move this thread into a new network namespace whose one interface is loopback (up), and
    back afterwards. Processes started from this thread meanwhile are born in it."""
    outside_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    outside = network_namespace()
    try:
        _libc_call("unshare", CLONE_NEWNET)
        try:
            _bring_loopback_up()
            names = [name for _, name in socket.if_nameindex()]
            if names != ["lo"]:
                raise RuntimeError(f"the new network namespace has interfaces {names}, not only lo")
            inside_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                yield LoopbackNetwork(network_namespace(), outside, inside_fd, outside_fd)
            finally:
                os.close(inside_fd)
        finally:
            _libc_call("setns", outside_fd, CLONE_NEWNET)
    finally:
        os.close(outside_fd)


def listening_sockets(pids: list[int]) -> dict[int, list[tuple[str, int]]]:
    """The TCP and UDP sockets each process listens on (``ss -ltnup`` of those processes): (address, port)."""
    found: dict[int, list[tuple[str, int]]] = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            connections = psutil.Process(pid).net_connections(kind="inet")
            found[pid] = sorted({
                (c.laddr.ip, c.laddr.port) for c in connections
                if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
            })
    return found


@contextlib.contextmanager
def _outside(network: LoopbackNetwork) -> Iterator[None]:
    _libc_call("setns", network.outside_fd, CLONE_NEWNET)
    try:
        yield
    finally:
        _libc_call("setns", network.inside_fd, CLONE_NEWNET)


def reachable_from_outside(network: LoopbackNetwork, ports: list[int]) -> list[str]:
    """Connect from the namespace outside (this computer's own addresses, loopback included) to
    ``ports``; every address:port that answered. A port that some process outside listens on
    itself (Ray's own random picks can coincide with one) is not tried."""
    answered = []
    with _outside(network):
        taken = {c.laddr.port for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        addresses = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET]
        for address in addresses:
            for port in sorted(set(ports) - taken):
                with socket.socket() as s:
                    s.settimeout(2)
                    if s.connect_ex((address, port)) == 0:
                        answered.append(f"{address}:{port}")
    return answered


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


@dataclass(frozen=True)
class LoopbackRayCluster:
    address: str  # of its GCS, 127.0.0.1:port
    process: subprocess.Popen  # ``ray start --block``; its descendants are the cluster's processes
    network: LoopbackNetwork
    token_path: Path | None  # the token it was started with (None: no authentication)

    def pids(self) -> list[int]:
        return [self.process.pid, *(p.pid for p in psutil.Process(self.process.pid).children(recursive=True))]


@contextlib.contextmanager
def loopback_ray_cluster(num_cpus: int = 2, authentication: bool = True) -> Iterator[LoopbackRayCluster]:
    """Start a one-node Ray on 127.0.0.1, in a loopback-only network namespace that this thread
    enters until the end (see the module's notes), with ``num_cpus`` CPU slots and no GPU."""
    # Ports free outside as well, so that nothing there answers on them (see reachable_from_outside).
    (gcs, object_manager, node_manager, agent_listen, agent_grpc, runtime_env, metrics,
     *workers) = free_ports(7 + WORKER_PORTS)
    with loopback_only_network() as network:
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
        environment.pop("RAY_AUTH_TOKEN", None)
        token_path = temp_dir / "auth_token" if authentication else None
        if token_path is not None:
            token_path.write_text(secrets.token_hex(32))
            environment.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
        else:
            environment["RAY_AUTH_MODE"] = "disabled"
            environment.pop("RAY_AUTH_TOKEN_PATH", None)
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
            saved = {name: os.environ.pop(name, None) for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
            if token_path is not None:
                os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
            try:
                yield LoopbackRayCluster(address, process, network, token_path)
            finally:
                stop_process_tree(process)
                for name, value in saved.items():
                    os.environ.pop(name, None)
                    if value is not None:
                        os.environ[name] = value
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
