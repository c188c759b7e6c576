"""True and false face detections per score threshold on the face set of issue 34.

Builds ``harness/face_set.py``'s pictures (real faces with their boxes, and pictures without a
face) and runs the YuNet detector as the engine runs it, twice at a low threshold: its three finer
heads alone, then its coarsest head alone. Prints, per threshold (one for all heads, as before
issue 34; then the coarsest head's with the finer heads' at the default), how many real faces are
found (a detection overlapping the true box by IoU >= 0.5), how many faceless pictures get a box,
and how many extra boxes the face pictures get; then the lowest-scoring faces and the
highest-scoring false boxes of each head. (Counted from the two runs apart: non-maximum
suppression between the heads is left out.) Asserts nothing.

    python bench/face_threshold.py [--thresholds 0.5,0.6,...] [--floor 0.3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from harness.face_set import FACE_SET_VERSION, build_face_set  # noqa: E402
from harness.media import media  # noqa: E402
from xportrait2_core.media.crops import FaceBox  # noqa: E402
from xportrait2_core.media.face_detector import (  # noqa: E402
    COARSE_HEAD_SCORE_THRESHOLD,
    DEFAULT_SCORE_THRESHOLD,
    FaceDetectorRunner,
    detect_face,
)

DEFAULT_THRESHOLDS = "0.5,0.6,0.7,0.8,0.85,0.9,0.93,0.95,0.97,0.99"


def iou(a: FaceBox, b: FaceBox) -> float:
    width = max(0.0, min(a.right, b.right) - max(a.left, b.left))
    height = max(0.0, min(a.bottom, b.bottom) - max(a.top, b.top))
    overlap = width * height
    return overlap / (a.width * a.height + b.width * b.height - overlap)


def scored_detections(pictures, detector):
    """Per picture: (picture, scores of detections on its face, scores of the other boxes)."""
    results = []
    for picture in pictures:
        rows = detector.detect(picture.image[None])[0]
        on_face, others = [], []
        for row in rows.tolist():
            box, score = FaceBox(*row[:4]), row[4]
            hit = picture.face is not None and iou(box, picture.face) >= 0.5
            (on_face if hit else others).append(score)
        results.append((picture, on_face, others))
    return results


def counts(fine, coarse, fine_threshold, coarse_threshold):
    """(faces found, faces, faceless pictures with a box, faceless pictures, false boxes there,
    extra boxes on face pictures) when each head keeps what scores above its threshold."""
    faces = found = fooled = faceless = false_boxes = extra = 0
    for (picture, fine_hits, fine_others), (_, coarse_hits, coarse_others) in zip(fine, coarse):
        hits = [s for s in fine_hits if s > fine_threshold] + [s for s in coarse_hits if s > coarse_threshold]
        others = [s for s in fine_others if s > fine_threshold] + [s for s in coarse_others if s > coarse_threshold]
        if picture.face is None:
            faceless += 1
            fooled += bool(others or hits)
            false_boxes += len(others)
        else:
            faces += 1
            found += bool(hits)
            extra += len(others)
    return found, faces, fooled, faceless, false_boxes, extra


def print_table(title, fine, coarse, pairs):
    print(f"\n{title}\n")
    print("| finer heads | coarsest head | faces found | faces missed | faceless pictures with a box "
          "| false boxes there | extra boxes on face pictures |")
    print("|---|---|---|---|---|---|---|")
    for fine_threshold, coarse_threshold in pairs:
        found, faces, fooled, faceless, false_boxes, extra = counts(fine, coarse, fine_threshold, coarse_threshold)
        print(f"| {fine_threshold:.2f} | {coarse_threshold:.2f} | {found}/{faces} | {faces - found} "
              f"| {fooled}/{faceless} | {false_boxes} | {extra} |")


def print_extremes(head, results, count):
    faces = [(max(hits) if hits else 0.0, picture.name) for picture, hits, _ in results if hits]
    false = [(max(others), picture.name + ("" if picture.face is None else " (extra box)"))
             for picture, _, others in results if others]
    print(f"\n{head}: lowest-scoring real faces: " + "; ".join(f"{s:.3f} {n}" for s, n in sorted(faces)[:count]))
    print(f"{head}: highest-scoring false boxes: " + "; ".join(f"{s:.3f} {n}" for s, n in sorted(false)[::-1][:count]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", default=DEFAULT_THRESHOLDS)
    parser.add_argument("--floor", type=float, default=0.3, help="threshold the detector runs at (lowest shown)")
    parser.add_argument("--worst", type=int, default=6, help="how many lowest faces / highest false boxes to list")
    args = parser.parse_args()
    torch.set_num_threads(2)
    thresholds = [float(t) for t in args.thresholds.split(",")]

    weights = media("yunet_final.pth")
    reference = FaceDetectorRunner.from_weights(weights)

    def locate(image):
        return detect_face(image, reference)

    started = time.perf_counter()
    pictures = build_face_set(locate)
    built = time.perf_counter() - started
    started = time.perf_counter()
    never = 2.0  # above any score: that head finds nothing
    fine = scored_detections(pictures, FaceDetectorRunner.from_weights(weights, score_threshold=args.floor,
                                                                        coarse_score_threshold=never))
    coarse = scored_detections(pictures, FaceDetectorRunner.from_weights(weights, score_threshold=never,
                                                                          coarse_score_threshold=args.floor))
    ran = time.perf_counter() - started

    with_face = sum(picture.face is not None for picture in pictures)
    print(f"face set v{FACE_SET_VERSION}: {with_face} pictures with a face, {len(pictures) - with_face} without "
          f"(built in {built:.0f} s, detected twice in {ran:.0f} s); defaults: {DEFAULT_SCORE_THRESHOLD} on the "
          f"finer heads, {COARSE_HEAD_SCORE_THRESHOLD} on the coarsest")
    print_table("One threshold for every head (before issue 34 it was 0.5):", fine, coarse,
                [(t, t) for t in thresholds])
    print_table(f"The finer heads at {DEFAULT_SCORE_THRESHOLD}, the coarsest head's threshold varied:", fine, coarse,
                [(DEFAULT_SCORE_THRESHOLD, t) for t in thresholds])
    print_table(f"The coarsest head at {COARSE_HEAD_SCORE_THRESHOLD}, the finer heads' threshold varied:", fine,
                coarse, [(t, COARSE_HEAD_SCORE_THRESHOLD) for t in [args.floor, 0.4] + thresholds[:5]])
    print_extremes("finer heads", fine, args.worst)
    print_extremes("coarsest head", coarse, args.worst)


if __name__ == "__main__":
    main()
