"""What it costs ``xportrait2 batch`` to know its inputs and weights by their content (issue 35).

A finished video's record (:mod:`xportrait2_core.render_record`) holds the SHA-256 of every input
and weight file, so that a rerun skips a video only when it would be made exactly so again. This
prints, for the test media and for files of the sizes of a long take and of the X-NeMo weights,
the seconds a whole-file SHA-256 takes (read from the page cache: a cold disk adds its read time,
which a render pays too when it loads the file) beside a cheaper fingerprint that reads only
the first and last MiB (size + head + tail), and what the second call costs (the hash is kept
while the file's size, times and inode stay the same). Run from the repository root::

    python bench/file_identity.py [--sizes-mib 256 1024 4096]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.media import media  # noqa: E402
from xportrait2_core.render_record import file_identity  # noqa: E402

MIB = 1 << 20


def head_and_tail(path: Path) -> str:
    """The cheaper fingerprint weighed against the whole hash: size, first MiB, last MiB."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as file:
        digest.update(file.read(MIB))
        file.seek(max(0, path.stat().st_size - MIB))
        digest.update(file.read(MIB))
    return digest.hexdigest()


def seconds(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[256, 1024])
    args = parser.parse_args()
    files = [media("driving_230f.mp4"), media("driving_60f.mp4"), media("photo_ref.png")]
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes_mib:
            path = Path(folder) / f"random_{size}MiB.bin"
            with path.open("wb") as file:
                for _ in range(size):
                    file.write(os.urandom(MIB))
            files.append(path)
        print(f"{'file':28} {'MiB':>8} {'sha256 s':>9} {'GB/s':>6} {'again s':>9} {'head+tail s':>12}")
        for path in files:
            head_and_tail(path)  # in the page cache for both, as after the first job of a batch
            size = path.stat().st_size
            whole = seconds(file_identity, path)
            again = seconds(file_identity, path)
            cheap = seconds(head_and_tail, path)
            print(f"{path.name:28} {size / MIB:8.1f} {whole:9.4f} {size / whole / 1e9:6.2f} {again:9.5f} {cheap:12.5f}")


if __name__ == "__main__":
    main()
