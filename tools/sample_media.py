"""Writes the sample media that ``xportrait2 demo`` animates, shipped inside the package
(``xportrait2_core/media/samples/``), from the project's test media in ``../shared/media``:

* ``portrait.png``: ``photo_ref.png`` as it is;
* ``driving.mp4``: the first 3 seconds (75 frames at 25 fps) of ``driving_230f.mp4``, re-encoded
  (H.264, crf 23) so that the wheel stays small;
* ``yunet_final.pth``: kornia's YuNet face-detector weights, as they are;
* ``NOTICE``: where each file comes from and under which license.

    python tools/sample_media.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import av

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO_ROOT.parent / "shared" / "media"
SAMPLES = REPO_ROOT / "xportrait2_core" / "media" / "samples"
TAKE_FRAMES = 75

NOTICE = """Sample media shipped with xportrait2 for `xportrait2 demo`.

portrait.png
  demo/ref_image.png of https://github.com/bytedance/x-nemo-inference (Apache License 2.0).

driving.mp4
  The first 3 seconds of demo/driving_video.mp4 of https://github.com/bytedance/x-nemo-inference
  (Apache License 2.0), re-encoded with H.264.

yunet_final.pth
  The YuNet face-detector weights of https://github.com/kornia/data (yunet_final.pth), as kornia
  downloads them (Apache License 2.0).
"""


def main() -> int:
    if not SHARED_MEDIA.is_dir():
        print(f"sample_media: {SHARED_MEDIA} not found (the project's shared folder beside the checkout)", file=sys.stderr)
        return 2
    SAMPLES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SHARED_MEDIA / "photo_ref.png", SAMPLES / "portrait.png")
    shutil.copyfile(SHARED_MEDIA / "yunet_final.pth", SAMPLES / "yunet_final.pth")
    with av.open(str(SHARED_MEDIA / "driving_230f.mp4")) as source, av.open(str(SAMPLES / "driving.mp4"), "w") as output:
        stream = source.streams.video[0]
        video = output.add_stream("libx264", rate=stream.average_rate, options={"crf": "23", "preset": "slow"})
        video.width, video.height, video.pix_fmt = stream.width, stream.height, "yuv420p"
        for index, frame in zip(range(TAKE_FRAMES), source.decode(stream)):
            picture = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            picture.pts = index
            output.mux(video.encode(picture))
        output.mux(video.encode())
    (SAMPLES / "NOTICE").write_text(NOTICE)
    for path in sorted(SAMPLES.iterdir()):
        print(f"{path.relative_to(REPO_ROOT)}  {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
