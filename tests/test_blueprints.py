"""The subgraph blueprints and the App Mode template as files, without ComfyUI: each is what
``tools/workflows.py`` writes from the shipped graphs (so an edit of a template reaches them), the
blueprints say what they do in the words artists search for, and promote what artists touch.
They are run in ComfyUI by test_comfyui_e2e.py (through /prompt) and test_browser.py (in the page)."""

from __future__ import annotations

import json

import pytest

from harness import REPO_ROOT
from tools.workflows import APP, APP_INPUTS, BLUEPRINT_FOLDER, BLUEPRINTS, UI_FOLDER, build_app, build_blueprint

ARTIST_WORDS = ("face animation", "expression transfer", "talking head", "live portrait", "act-one")
# What the issue names: model files, seed, steps, guidance, size, which face, which performer,
# blend, motion intensity (the frames blueprint has no blend: it pastes nothing back).
TOUCHED = {"denoising_unet", "clip_name", "vae_name", "seed", "steps", "guidance", "size", "face_index", "performer",
           "motion_intensity"}


def test_the_blueprint_folder_holds_exactly_the_blueprints():
    assert sorted(path.stem for path in BLUEPRINT_FOLDER.glob("*.json")) == sorted(spec.title for spec in BLUEPRINTS)
    assert BLUEPRINT_FOLDER == REPO_ROOT / "subgraphs"  # where ComfyUI looks: <pack>/subgraphs/*.json


@pytest.mark.parametrize("spec", BLUEPRINTS, ids=lambda spec: spec.title)
def test_blueprint_file_is_what_the_tool_writes(spec):
    written = json.loads((BLUEPRINT_FOLDER / f"{spec.title}.json").read_text())
    assert written == build_blueprint(spec), "run `python tools/workflows.py blueprints`"


@pytest.mark.parametrize("spec", BLUEPRINTS, ids=lambda spec: spec.title)
def test_blueprint_speaks_the_artists_words_and_promotes_what_they_touch(spec):
    written = json.loads((BLUEPRINT_FOLDER / f"{spec.title}.json").read_text())
    aliases = written["extra"]["BlueprintSearchAliases"]
    assert set(ARTIST_WORDS) <= set(aliases)
    assert all(word in written["extra"]["BlueprintDescription"].lower() for word in ARTIST_WORDS)
    node = written["nodes"][0]
    promoted = {slot["name"] for slot in node["inputs"] if "widget" in slot}
    assert TOUCHED <= promoted, TOUCHED - promoted
    # The rest stays inside: no knob beyond what artists touch reaches the blueprint node.
    assert promoted <= TOUCHED | {"blend", "max_frames"}
    sockets = [slot["type"] for slot in node["inputs"] if "widget" not in slot]
    assert sockets == ["IMAGE", "VIDEO"]


def test_the_app_is_what_the_tool_writes_and_opens_in_app_mode():
    written = json.loads((UI_FOLDER / f"{APP}.json").read_text())
    assert written == build_app(), "run `python tools/workflows.py app`"
    extra = written["extra"]
    assert extra["linearMode"] is True
    by_id = {node["id"]: node for node in written["nodes"]}
    shown = [(by_id[node_id]["type"], widget) for node_id, widget in extra["linearData"]["inputs"]]
    assert shown == [(kind, widget) for kind, widget, _label in APP_INPUTS]
    assert shown == [("LoadImage", "image"), ("LoadVideo", "file"), ("XPortrait2Sampler", "seed"),
                     ("XPortrait2Sampler", "steps"), ("XPortrait2SourceFaceCrop", "face_index")]
    assert [by_id[node_id]["type"] for node_id in extra["linearData"]["outputs"]] == ["SaveVideo"]
