"""Files that appear under their name only when they are complete.

Writers fill a hidden temporary file beside the target (``tempfile.mkstemp``, which makes it
readable by its owner alone) and rename it when done. Before the rename the file gets the mode any
new file of this process would get (0o666 less the umask), so that a shared render folder, a
service account or a container can read the results, as the user's umask intends.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
