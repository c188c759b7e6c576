"""Files that appear under their name only when they are complete, and names claimed by the run
that will write them.

Writers fill a hidden temporary file beside the target (``tempfile.mkstemp``, which makes it
readable by its owner alone) and rename it when done. Before the rename the file gets the mode any
new file of this process would get (0o666 less the umask), so that a shared render folder, a
service account or a container can read the results, as the user's umask intends.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from .media.images import MediaError, PathLike

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc/self/status``);
    elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(temporary: Path, target: Path) -> None:
    """Give ``temporary`` the mode of a new file and rename it to ``target`` (atomically)."""
    os.chmod(temporary, 0o666 & ~current_umask())
    os.replace(temporary, target)


def claim_path(target: Path) -> Path:
    """The hidden file beside ``target`` whose lock says a run is writing ``target``."""
    return target.parent / f".{target.name}.claim"


def _try_lock(handle) -> bool:
    """Lock an open file for this process without waiting; the system drops the lock when the
    process ends in any way (an exception, Ctrl-C, a crash, kill -9), so a claim is never stale."""
    try:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


class OutputClaim:
    """A run's claim on the name it will write: taken before any work starts, held until the
    result is under its name or the run failed, then given up (:meth:`release`, or ``with``).

    A second run claiming the same name while the first holds it is refused with an error naming
    the process that holds it. The claim is a lock on a hidden file beside the target, not the
    file's existence: a run that dies without cleaning up leaves at most an unlocked file, which
    the next claim takes over.
    """

    def __init__(self, target: PathLike) -> None:
        self.target = Path(target)
        self.path = claim_path(self.target)
        self._handle = None
        while self._handle is None:
            try:
                handle = open(self.path, "a+", encoding="utf-8")
            except OSError as error:
                raise MediaError(f"cannot write into {self.target.parent}: {error}") from error
            if not _try_lock(handle):
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise MediaError(
                    f"{self.target} is being written by another run ({holder}): wait for it to finish "
                    "or write to another file"
                )
            if self._still_named(handle):
                self._handle = handle
            else:  # the holder before us removed the file as we opened it: claim the new one
                handle.close()
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')}\n")
        self._handle.flush()

    def _still_named(self, handle) -> bool:
        try:
            return os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
        except OSError:
            return False

    def release(self) -> None:
        """Give the name up (the hidden file goes; the lock with it)."""
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._handle.close()
        self._handle = None

    def __enter__(self) -> OutputClaim:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
