"""Files that appear under their name only when they are complete.

Writers fill a hidden temporary file beside the target (``tempfile.mkstemp``, which makes it
readable by its owner alone) and rename it when done. Before the rename the file gets the mode any
new file of this process would get (0o666 less the umask), so that a shared render folder, a
service account or a container can read the results, as the user's umask intends.
"""

from __future__ import annotations

import os
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
