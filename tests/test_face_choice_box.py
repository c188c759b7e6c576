"""Which detected face a box chooses (FaceChoiceBox), without ComfyUI: a loose box around a head, a
tight box on a face, a box over two faces, and a box at no face."""

from __future__ import annotations

import pytest
import torch

from xportrait2_core.media.face_choice_box import FaceChoiceBox, face_at_box
from xportrait2_core.media.face_detector import FaceNotFoundError

# Two detections (left, top, right, bottom, score), the left one smaller.
FACES = torch.tensor([[40.0, 50, 120, 150, 0.9], [300, 40, 420, 190, 0.95]])


@pytest.mark.parametrize(
    "box, face",
    [
        (FaceChoiceBox(0, 0, 256, 256), 0),  # loose, around the left head
        (FaceChoiceBox(256, 0, 512, 256), 1),  # loose, around the right head
        (FaceChoiceBox(330, 80, 390, 160), 1),  # tight, landmark extents inside the right face
        (FaceChoiceBox(30, 30, 430, 200), 1),  # over both: the better overlap
        (FaceChoiceBox(80, 50, 160, 150), 0),  # half on the left face, half on nothing
    ],
)
def test_a_box_chooses_the_face_it_points_at(box, face):
    assert face_at_box(FACES, box, "the portrait") == face


@pytest.mark.parametrize("box", [FaceChoiceBox(0, 0, 16, 16), FaceChoiceBox(110, 50, 300, 150), FaceChoiceBox(50, 60, 50, 90)],
    ids=["corner", "between the faces", "no area"],)
def test_a_box_at_no_face_fails_in_one_line(box):
    with pytest.raises(FaceNotFoundError) as error:
        face_at_box(FACES, box, "the portrait")
    message = str(error.value)
    assert message.startswith(f"no face at the box {box.describe()} in the portrait")
    assert "(x 40, y 50, 80x100), (x 300, y 40, 120x150)" in message and "\n" not in message
