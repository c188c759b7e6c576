"""Files that appear under their name only when they are complete, and names claimed by the run
that will write them.

Writers fill a hidden temporary file beside the target (``tempfile.mkstemp``, which makes it
readable by its owner alone) and rename it when done. Before the rename the file gets the mode any
new file of this process would get (0o666 less the umask), so that a shared render folder, a
service account or a container can read the results, as the user's umask intends.

While it is written, the partial file is locked (POSIX ``flock``; on Windows an open file cannot
be deleted), so that a clean-up of partial files a killed process left never removes the file of
a writer that is still at work (another server or batch sharing the folder).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import tempfile
import time
from pathlib import Path

from .media.images import MediaError, PathLike

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

# mkstemp's names: the given prefix and suffix around 8 characters of this alphabet.
_MKSTEMP_PART = r"[a-z0-9_]{8}"
PARTIAL_NAME = re.compile(rf"^\.(?P<stem>.+)\.{_MKSTEMP_PART}\.partial(?P<suffix>\.[A-Za-z0-9]+)$")


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


def partial_prefix(target: Path) -> str:
    return f".{target.stem}."


def partial_suffix(target: Path) -> str:
    return f".partial{target.suffix}"


def new_partial_file(target: Path) -> tuple[Path, int]:
    """A new hidden, locked partial file beside ``target``: its path and its open descriptor, which
    holds the lock until it is closed (after :func:`publish` or removal)."""
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=partial_prefix(target), suffix=partial_suffix(target))
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_EX)
    return Path(name), handle


def is_partial_file(path: Path) -> bool:
    """Whether the name is one a writer here gives its partial files (and so no user's file)."""
    return PARTIAL_NAME.match(path.name) is not None


def remove_if_abandoned(partial: Path) -> bool:
    """Delete a partial file whose writer is gone (its lock is free); True if it was removed."""
    try:
        handle = os.open(partial, os.O_RDONLY)
    except OSError:
        return False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # a live writer holds it
        partial.unlink()
        return True
    except OSError:
        return False  # Windows: still open by its writer
    finally:
        os.close(handle)


def remove_abandoned_partial_files(folder: Path) -> list[Path]:
    """Delete, anywhere under ``folder``, the partial files of writers that were killed outright
    (SIGKILL, a crash, power lost), where no clean-up could run. Only names :func:`is_partial_file`
    accepts are touched, and only unlocked ones. Returns what was removed."""
    if not folder.is_dir():
        return []
    return [path for path in folder.rglob(".*.partial.*") if is_partial_file(path) and path.is_file() and remove_if_abandoned(path)]


def write_failure(target: Path, error: BaseException) -> str:
    """One line for a failed write that names the folder, and the disk when it is full."""
    reason = str(error)
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in reason:
        # Not the error's own text, which names the hidden partial file rather than the target.
        reason = f"the disk holding {target.parent} is full (no space left on the device)"
    return f"writing {target.name} into {target.parent} failed: {reason}"


def publish(temporary: Path, target: Path) -> None:
    """Give ``temporary`` the mode of a new file and rename it to ``target`` (atomically)."""
    os.chmod(temporary, 0o666 & ~current_umask())
    os.replace(temporary, target)


def write_text_atomically(target: Path, text: str) -> None:
    """``text`` as the file ``target``, which appears only once it is complete."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        publish(Path(temporary), target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_output_folder(output: Path) -> None:
    """Refuse, before any work, an output whose folder is missing or read-only."""
    if not output.parent.is_dir():
        raise MediaError(f"cannot write {output}: folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise MediaError(f"cannot write {output}: folder {output.parent} is read-only")


def why_unwritable(folder: Path) -> str | None:
    """Why no file can be written into ``folder`` (read-only, no permission, full disk), found by
    writing one byte to a hidden file that is removed again; None when it can be."""
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".xportrait2-write-test.")
    except OSError as error:
        return error.strerror or str(error)
    try:
        os.write(handle, b"\0")
        os.fsync(handle)
    except OSError as error:
        return error.strerror or str(error)
    finally:
        os.close(handle)
        os.unlink(temporary)
    return None


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
