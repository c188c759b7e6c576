"""Maintain the shipped workflows in ``example_workflows/``.

``python tools/workflows.py tidy``
    Rewrites the UI-format graphs in place: the help Note of each graph, the download
    declarations of the models that can be fetched (``properties.models`` on their loader nodes,
    read by ComfyUI's missing-models dialog), and a left-to-right layout in the order the data
    flows (a node sits right of every node that feeds it; nodes in one column are stacked with
    room for their title bars and widgets, so none overlap).

``python tools/workflows.py thumbnails SHOTS``
    Writes ``example_workflows/<name>.jpg``, the template cards' pictures: the shared demo
    portrait and a frame of the demo driving video above a screenshot of the opened graph
    (``SHOTS/<name> graph.png``, as ``tests/test_browser.py`` saves them).

``python tools/workflows.py blueprints``
    Writes the subgraph blueprints ``subgraphs/<title>.json`` (each appears as one node in
    ComfyUI's node library) from the shipped graphs: a blueprint is a graph's inner nodes with
    its loaders and savers cut off, the cut links becoming the blueprint's inputs and outputs,
    and the widgets an artist touches promoted to the blueprint node.

``python tools/workflows.py app``
    Writes the App Mode template ``example_workflows/Portrait animation (app).json``: the long-take
    graph, opening as a simple app (``extra.linearMode``) that shows only the inputs named in
    ``APP_INPUTS`` and the saved video.

``python tools/workflows.py twins``
    Run with the Python of a ComfyUI installation (``COMFYUI_PATH`` points at its folder): starts
    that ComfyUI with this pack on a free 127.0.0.1 port, converts every UI graph against its
    ``/object_info`` with comfy-cli's converter and writes the API-format twins to
    ``example_workflows/api/comfyui-<version>/``. Core nodes change their inputs between ComfyUI
    versions (e.g. Save Video's ``codec`` became ``format.codec`` in v0.33), so each supported
    version has its own set.
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
UI_FOLDER = REPO_ROOT / "example_workflows"
TWIN_FOLDER = UI_FOLDER / "api"
BLUEPRINT_FOLDER = REPO_ROOT / "subgraphs"

NOTE_ID = 100
COLUMN_GAP = 90
ROW_GAP = 70
TITLE_HEIGHT = 30  # the title bar is drawn above a node's position
SLOT_HEIGHT = 22
WIDGET_HEIGHT = 26
NODE_WIDTH = 330
# Nodes whose body shows a picture or a video: room for it.
MEDIA_HEIGHT = {"LoadImage": 330, "LoadVideo": 330, "SaveVideo": 330}
LOADER_ORDER = ("LoadImage", "LoadVideo", "XPortrait2Loader", "CLIPVisionLoader", "XPortrait2LoadTemporalVAE",
                "UpscaleModelLoader")

CLIP_FILE = "sd_image_variations_image_encoder.safetensors"
VAE_FILE = "svd_xt_vae.safetensors"
UPSCALER_FILE = "RealESRGAN_x4plus.pth"
DOWNLOADS = {
    "CLIPVisionLoader": {
        "name": CLIP_FILE,
        "url": "https://huggingface.co/lambdalabs/sd-image-variations-diffusers/resolve/main/image_encoder/model.safetensors",
        "directory": "clip_vision",
    },
    "XPortrait2LoadTemporalVAE": {
        "name": VAE_FILE,
        "url": "https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt/resolve/main/vae/"
        "diffusion_pytorch_model.safetensors",
        "directory": "vae",
    },
    "UpscaleModelLoader": {
        "name": UPSCALER_FILE,
        "url": "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        "directory": "upscale_models",
    },
}

MODELS_TEXT = f"""MODELS (ComfyUI/models/...)
- xportrait2/: xnemo_denoising_unet.pth, xnemo_reference_unet.pth, xnemo_temporal_module.pth, xnemo_motion_encoder.pth: the official X-NeMo weights (CC BY-NC 4.0), from the authors' Google Drive linked at github.com/bytedance/x-nemo-inference (no automatic download). Also yunet_final.pth, the face detector: huggingface.co/kornia/yunet
- clip_vision/{CLIP_FILE}: image_encoder/model.safetensors of huggingface.co/lambdalabs/sd-image-variations-diffusers, renamed
- vae/{VAE_FILE}: vae/diffusion_pytorch_model.safetensors of huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt, renamed
(ComfyUI offers the last two in its missing-models dialog.)"""

INPUTS_TEXT = """INPUTS (ComfyUI/input/): your portrait (portrait.png) and a driving video of a face (driving.mp4); pick your own files in the two loaders."""

DEFAULTS_TEXT = """DEFAULTS reproduce the official X-NeMo result: sampler ddim with the xnemo_ddim schedule, 35 steps, guidance 2.5, 24-frame windows overlapping by 4, a 512 px face square, seed 0."""

NOTES = {
    "Portrait to animated video": f"""Portrait to animated video (X-Portrait 2 / X-NeMo)
The face of the portrait follows the head motion and expressions of the driving video; the MP4 is the 512x512 face square, at the driving video's frame rate and with its sound.

{INPUTS_TEXT}

{MODELS_TEXT}

{DEFAULTS_TEXT}

TURN FIRST: motion_intensity on "ID-Filtered Motion Latents" (below 1 calmer, above 1 stronger expressions). For quick drafts lower steps on the sampler (15-20).""",
    "Portrait video - upscaled": f"""Portrait to animated video, upscaled and pasted back (X-Portrait 2 / X-NeMo)
The animated 512x512 face square is upscaled with an image upscaler model and pasted back into the whole portrait: the MP4 has the portrait's full resolution.

{INPUTS_TEXT}

{MODELS_TEXT}
- upscale_models/{UPSCALER_FILE}: Real-ESRGAN x4plus (github.com/xinntao/Real-ESRGAN releases, offered in the missing-models dialog); any upscaler model ComfyUI loads works.

{DEFAULTS_TEXT} Paste Back feathers the seam over 10% of the face square.

TURN FIRST: motion_intensity on "ID-Filtered Motion Latents"; then the upscaler model (a 2x one is faster); feather on Paste Back if the seam shows.""",
    "Portrait video - any sampler": f"""Portrait to animated video with the advanced sampler (X-Portrait 2 / X-NeMo)
The same animation, with the sampler and the noise schedule as separate nodes: core KSamplerSelect and the X-Portrait 2 Scheduler feed SAMPLER and SIGMAS sockets, so any ComfyUI sampler or sigma node can be plugged in.

{INPUTS_TEXT}

{MODELS_TEXT}

{DEFAULTS_TEXT} (ddim + xnemo_ddim give exactly the basic sampler's result.)

TURN FIRST: sampler_name on KSamplerSelect (e.g. euler, dpmpp_2m) together with steps on the Scheduler; then guidance.""",
    "Portrait video - long take": f"""Portrait to animated video, long take (X-Portrait 2 / X-NeMo)
For driving videos of any length: the take stays a file from Load Video to Save Video, read and written in chunks, so memory stays flat. The result is pasted back into the whole portrait, at the take's exact frame rate and with its sound.

{INPUTS_TEXT}

{MODELS_TEXT}

{DEFAULTS_TEXT} max_frames 0 on the Face Track node means the whole take.

TURN FIRST: max_frames on "Face Track (driving VIDEO)" to try a few seconds before the whole take; then motion_intensity.""",
    "Portrait video - two faces": f"""Portrait video with two faces (X-Portrait 2 / X-NeMo)
A portrait with two people, each face driven by its own performer of one driving video: two branches, one MP4 of the whole portrait at the driving video's frame rate and with its sound.

Face Crop (source) numbers the portrait's faces left to right (its faces preview shows the numbers); each branch takes one face_index. Face Track & Crop (driving) follows one performer (performer: index left to right at the first frame with faces, -1 the largest). The second Paste Back adds its face to the first one's frames (frames_so_far): chain one more branch per extra face. Give a branch its own Load Video to drive that face with another video.

INPUTS (ComfyUI/input/): a portrait with two faces (two_faces.png) and a driving video with two performers (two_performers.mp4); pick your own files in the two loaders.

{MODELS_TEXT}

{DEFAULTS_TEXT} blend "head" pastes a colour-matched ellipse around each head; where two faces' regions overlap, the overlap is split between them.

TURN FIRST: face_index and performer on each branch, checked against the numbered preview; then motion_intensity per face.""",
}
NOTES["Portrait animation (app)"] = NOTES["Portrait video - long take"].replace(
    "Portrait to animated video, long take (X-Portrait 2 / X-NeMo)",
    "Portrait animation as an app (X-Portrait 2 / X-NeMo)\nOpens in App Mode: the portrait, the driving video, seed, steps and which face (face_index, -1 the largest), and the video. Toggle App Mode off for this graph, the long-take one.",
)


def _node_height(node: dict) -> int:
    if node["type"] == "Note":
        return node["size"][1]
    inputs = [slot for slot in node.get("inputs", []) if "widget" not in slot]
    rows = max(len(inputs), len(node.get("outputs", [])), 1)
    widgets = len(node.get("widgets_values") or [])
    return rows * SLOT_HEIGHT + widgets * WIDGET_HEIGHT + 20 + MEDIA_HEIGHT.get(node["type"], 0)


def _sources(workflow: dict) -> dict[int, set[int]]:
    """node id -> ids of the nodes that feed it."""
    feeding: dict[int, set[int]] = {node["id"]: set() for node in workflow["nodes"]}
    for _link, origin, _slot, target, _tslot, _type in workflow["links"]:
        feeding[target].add(origin)
    return feeding


def layout(workflow: dict) -> None:
    """Columns by the longest chain of nodes feeding each node; stacked rows, no overlaps."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    feeding = _sources(workflow)
    column: dict[int, int] = {}

    def depth(node_id: int) -> int:
        if node_id not in column:
            column[node_id] = 1 + max((depth(source) for source in feeding[node_id]), default=-1)
        return column[node_id]

    for node_id in nodes:
        if nodes[node_id]["type"] != "Note":
            depth(node_id)
    columns: dict[int, list[int]] = {}
    for node_id, col in column.items():
        columns.setdefault(col, []).append(node_id)
    x = 0
    centre: dict[int, float] = {}
    for col in sorted(columns):
        members = columns[col]
        if col == 0:
            members.sort(key=lambda i: (LOADER_ORDER.index(nodes[i]["type"]) if nodes[i]["type"] in LOADER_ORDER else 99, i))
        else:  # beside the nodes that feed them
            members.sort(key=lambda i: (sum(centre[s] for s in feeding[i]) / len(feeding[i]), i))
        y = 0
        if col == 0 and NOTE_ID in nodes:
            note = nodes[NOTE_ID]
            note["pos"] = [x, TITLE_HEIGHT]
            y = TITLE_HEIGHT + note["size"][1] + ROW_GAP
        width = max(NODE_WIDTH, nodes[NOTE_ID]["size"][0] if col == 0 and NOTE_ID in nodes else 0)
        y = int(y)
        if col > 0:  # start level with the first node that feeds this column
            y = int(max(TITLE_HEIGHT, min(centre[s] for i in members for s in feeding[i]) - 100))
        for node_id in members:
            node = nodes[node_id]
            height = _node_height(node)
            node["pos"] = [x, y + TITLE_HEIGHT]
            node["size"] = [NODE_WIDTH, height]
            centre[node_id] = y + TITLE_HEIGHT + height / 2
            y += TITLE_HEIGHT + height + ROW_GAP
        x += width + COLUMN_GAP
    # Execution order (LiteGraph's "order") follows the columns.
    for order, node_id in enumerate(sorted(column, key=lambda i: (column[i], nodes[i]["pos"][1]))):
        nodes[node_id]["order"] = order
    if NOTE_ID in nodes:
        nodes[NOTE_ID]["order"] = len(column)


def set_note(workflow: dict, name: str) -> None:
    text = NOTES[name]
    lines = sum(1 + len(line) // 58 for line in text.splitlines())
    note = {
        "id": NOTE_ID, "type": "Note", "pos": [0, 0], "size": [520, 40 + lines * 17], "flags": {}, "order": 0,
        "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text], "title": "Read me",
        "color": "#432", "bgcolor": "#653",
    }
    workflow["nodes"] = [n for n in workflow["nodes"] if n["id"] != NOTE_ID] + [note]
    workflow["last_node_id"] = max(workflow["last_node_id"], NOTE_ID)


def declare_downloads(workflow: dict) -> None:
    for node in workflow["nodes"]:
        download = DOWNLOADS.get(node["type"])
        if download is not None:
            node["widgets_values"][0] = download["name"]
            node["properties"]["models"] = [dict(download)]


def tidy() -> None:
    for path in sorted(UI_FOLDER.glob("*.json")):
        workflow = json.loads(path.read_text())
        set_note(workflow, path.stem)
        declare_downloads(workflow)
        layout(workflow)
        workflow["nodes"].sort(key=lambda n: n["id"])
        app_mode = {key: value for key, value in workflow.get("extra", {}).items() if key in ("linearMode", "linearData")}
        workflow["extra"] = {"ds": {"scale": 0.5, "offset": [40, 40]}, **app_mode}
        path.write_text(json.dumps(workflow, indent=1, ensure_ascii=False) + "\n")
        print("tidied", path.relative_to(REPO_ROOT))


def twins() -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from comfy_cli.workflow_to_api import convert_ui_to_api

    from harness.comfyui_server import ComfyUIServer, find_comfyui
    from harness.comfyui_pack import comfyui_version

    comfyui = find_comfyui()
    if comfyui is None:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI folder")
    folder = TWIN_FOLDER / f"comfyui-{comfyui_version(comfyui)}"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir, ComfyUIServer(comfyui, Path(workdir)) as server:
        info = server.get_json("/object_info")
        if not any(name.startswith("XPortrait2") for name in info):
            raise SystemExit(f"the pack did not load in {comfyui}; its log:\n{server.log_text()[-3000:]}")
    for path in sorted(UI_FOLDER.glob("*.json")):
        twin = convert_ui_to_api(json.loads(path.read_text()), info)
        (folder / path.name).write_text(json.dumps(twin, indent=1, ensure_ascii=False) + "\n")
        print("wrote", (folder / path.name).relative_to(REPO_ROOT))


# ---- Subgraph blueprints -------------------------------------------------------------------------

SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20  # LiteGraph's ids of a subgraph's input and output nodes
# What artists type when they look for this (the words of their issues).
SEARCH_ALIASES = ("face animation", "expression transfer", "talking head", "live portrait", "act-one",
                  "portrait animation", "X-NeMo", "X-Portrait")
# The widgets an artist touches, promoted to the blueprint node: (node type, widget, socket type).
ARTIST_WIDGETS = (
    ("XPortrait2Loader", "denoising_unet", "COMBO"),
    ("CLIPVisionLoader", "clip_name", "COMBO"),
    ("XPortrait2LoadTemporalVAE", "vae_name", "COMBO"),
    ("XPortrait2Sampler", "seed", "INT"),
    ("XPortrait2Sampler", "steps", "INT"),
    ("XPortrait2Sampler", "guidance", "FLOAT"),
    ("XPortrait2SourceFaceCrop", "size", "INT"),
    ("XPortrait2SourceFaceCrop", "face_index", "INT"),
    ("XPortrait2DrivingVideoTrack", "performer", "INT"),
    ("XPortrait2DrivingVideoTrack", "max_frames", "INT"),
    ("XPortrait2DrivingFaceTrack", "performer", "INT"),
    ("XPortrait2DecodeToVideo", "blend", "COMBO"),
    ("XPortrait2MotionLatents", "motion_intensity", "FLOAT"),
)


@dataclass(frozen=True)
class Blueprint:
    title: str  # the node's name in the library, and the file's
    source: str  # the shipped graph it is cut from
    inner: tuple[int, ...]  # the source's nodes inside the blueprint
    inputs: tuple[tuple[str, int, int], ...]  # (name, a cut-off node, its output slot): what it fed comes in here
    outputs: tuple[tuple[str, int, int], ...]  # (name, an inner node, its output slot)
    description: str


BLUEPRINTS = (
    Blueprint(
        "Portrait Animation (X-Portrait 2)", "Portrait video - long take",
        inner=(2, 4, 5, 6, 7, 8, 9, 10, 11, 12),
        inputs=(("portrait", 1, 0), ("driving_video", 3, 0)),
        outputs=(("video", 12, 0),),
        description=(
            "Animates a portrait (photo or cartoon) with a driving video of a face: the person makes the driver's "
            "expressions and head motion and keeps their own identity (X-Portrait 2 / X-NeMo). Out comes a VIDEO "
            "of the whole portrait with the take's frame rate and sound; the take is read and written in chunks, "
            "so memory stays flat however long it is. Face animation, expression transfer, talking head, live "
            "portrait, act-one."
        ),
    ),
    Blueprint(
        "Portrait Animation Frames (X-Portrait 2)", "Portrait to animated video",
        inner=(2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13),
        inputs=(("portrait", 1, 0), ("driving_video", 3, 0)),
        outputs=(("frames", 13, 0), ("fps", 4, 2), ("audio", 4, 1)),
        description=(
            "Animates a portrait (photo or cartoon) with a driving video of a face (X-Portrait 2 / X-NeMo) and "
            "returns the animated face square as IMAGE frames, with the take's frame rate and sound: for upscaler "
            "chains, then Create Video. Face animation, expression transfer, talking head, live portrait, act-one."
        ),
    ),
)


def _stable_id(*words: str) -> str:
    """A UUID that stays the same each time the blueprints are written."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-xportrait2/" + "/".join(words)))


def _link(link_id: int, origin: int, origin_slot: int, target: int, target_slot: int, kind: str) -> dict:
    return {"id": link_id, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
            "target_slot": target_slot, "type": kind}


def build_blueprint(spec: Blueprint) -> dict:
    graph = json.loads((UI_FOLDER / f"{spec.source}.json").read_text())
    nodes = {node["id"]: node for node in graph["nodes"] if node["id"] in spec.inner}
    links = [_link(*link) for link in graph["links"] if link[1] in nodes and link[3] in nodes]
    next_link = max(link[0] for link in graph["links"]) + 1
    inputs, outputs = [], []
    for index, (name, cut_node, slot) in enumerate(spec.inputs):
        fed = [link for link in graph["links"] if link[1:3] == [cut_node, slot] and link[3] in nodes]
        links += [_link(link[0], SUBGRAPH_INPUT, index, link[3], link[4], link[5]) for link in fed]
        inputs.append({"id": _stable_id(spec.title, "in", name), "name": name, "type": fed[0][5],
                       "linkIds": [link[0] for link in fed]})
    promoted = [(node_id, widget, kind) for node_type, widget, kind in ARTIST_WIDGETS
                for node_id, node in sorted(nodes.items()) if node["type"] == node_type]
    for node_id, widget, kind in promoted:
        node = nodes[node_id]
        node["inputs"].append({"name": widget, "type": kind, "widget": {"name": widget}, "link": next_link})
        links.append(_link(next_link, SUBGRAPH_INPUT, len(inputs), node_id, len(node["inputs"]) - 1, kind))
        inputs.append({"id": _stable_id(spec.title, "in", widget), "name": widget, "type": kind, "linkIds": [next_link]})
        next_link += 1
    for index, (name, node_id, slot) in enumerate(spec.outputs):
        kind = nodes[node_id]["outputs"][slot]["type"]
        links.append(_link(next_link, node_id, slot, SUBGRAPH_OUTPUT, index, kind))
        outputs.append({"id": _stable_id(spec.title, "out", name), "name": name, "type": kind, "linkIds": [next_link]})
        next_link += 1
    for node in nodes.values():
        for output in node.get("outputs", []):
            output["links"] = [link["id"] for link in links if link["origin_id"] == node["id"]
                               and link["origin_slot"] == node["outputs"].index(output)] or None
    left = min(node["pos"][0] for node in nodes.values())
    right = max(node["pos"][0] + node["size"][0] for node in nodes.values())
    top = min(node["pos"][1] for node in nodes.values())
    subgraph_id = _stable_id(spec.title)
    definition = {
        "id": subgraph_id, "version": 1,
        "state": {"lastGroupId": 0, "lastNodeId": max(nodes), "lastLinkId": next_link - 1, "lastRerouteId": 0},
        "revision": 0, "config": {}, "name": spec.title, "description": spec.description,
        "inputNode": {"id": SUBGRAPH_INPUT, "bounding": [left - 260, top, 180, 40 + 20 * len(inputs)]},
        "outputNode": {"id": SUBGRAPH_OUTPUT, "bounding": [right + 80, top, 140, 40 + 20 * len(outputs)]},
        "inputs": inputs, "outputs": outputs, "widgets": [],
        "nodes": [nodes[i] for i in sorted(nodes)], "groups": [], "links": links, "extra": {},
        "category": "X-Portrait 2",
    }
    node = {
        "id": 1, "type": subgraph_id, "pos": [0, 0], "size": [400, 60 + 26 * len(inputs)], "flags": {}, "order": 0,
        "mode": 0, "title": spec.title,
        "inputs": [{"name": i["name"], "type": i["type"], "link": None, **({"widget": {"name": i["name"]}}
                    if i["name"] not in {name for name, _, _ in spec.inputs} else {})} for i in inputs],
        "outputs": [{"name": o["name"], "type": o["type"], "links": []} for o in outputs],
        "properties": {"proxyWidgets": [[str(node_id), widget] for node_id, widget, _ in promoted]},
        "widgets_values": [],
    }
    return {
        "revision": 0, "last_node_id": 1, "last_link_id": 0, "nodes": [node], "links": [], "version": 0.4,
        "definitions": {"subgraphs": [definition]},
        "extra": {"BlueprintDescription": spec.description, "BlueprintSearchAliases": list(SEARCH_ALIASES)},
    }


def graph_with_blueprint(spec: Blueprint) -> dict:
    """The blueprint's source graph with the blueprint node in place of its inner nodes: how an
    artist wires it (the same loaders and savers), in the UI format."""
    graph = json.loads((UI_FOLDER / f"{spec.source}.json").read_text())
    written = build_blueprint(spec)
    node = dict(written["nodes"][0], id=max(n["id"] for n in graph["nodes"]) + 1)
    for index, (_name, cut_node, slot) in enumerate(spec.inputs):
        link_id = max(link[0] for link in graph["links"]) + 1
        graph["links"].append([link_id, cut_node, slot, node["id"], index, node["inputs"][index]["type"]])
        node["inputs"][index] = dict(node["inputs"][index], link=link_id)
    for index, (_name, inner_node, slot) in enumerate(spec.outputs):
        for link in graph["links"]:
            if link[1:3] == [inner_node, slot] and link[3] not in spec.inner:
                link[1:3] = [node["id"], index]
    graph["links"] = [link for link in graph["links"] if link[1] not in spec.inner and link[3] not in spec.inner]
    graph["nodes"] = [n for n in graph["nodes"] if n["id"] not in spec.inner and n["type"] != "Note"] + [node]
    for kept in graph["nodes"]:
        for index, output in enumerate(kept.get("outputs", [])):
            output["links"] = [link[0] for link in graph["links"] if link[1:3] == [kept["id"], index]]
    graph["definitions"] = written["definitions"]
    graph["last_node_id"] = node["id"]
    graph["last_link_id"] = max(link[0] for link in graph["links"])
    return graph


def blueprints() -> None:
    BLUEPRINT_FOLDER.mkdir(exist_ok=True)
    for spec in BLUEPRINTS:
        path = BLUEPRINT_FOLDER / f"{spec.title}.json"
        path.write_text(json.dumps(build_blueprint(spec), indent=1, ensure_ascii=False) + "\n")
        print("wrote", path.relative_to(REPO_ROOT))


# ---- The App Mode template -----------------------------------------------------------------------

APP = "Portrait animation (app)"
APP_SOURCE = "Portrait video - long take"
# What the app shows: (node type, widget), in this order, and the node whose result it shows.
APP_INPUTS = (("LoadImage", "image", "portrait"), ("LoadVideo", "file", "driving video"),
              ("XPortrait2Sampler", "seed", "seed"), ("XPortrait2Sampler", "steps", "steps"),
              ("XPortrait2SourceFaceCrop", "face_index", "which face (-1: the largest)"))
APP_OUTPUT = "SaveVideo"


def build_app() -> dict:
    graph = json.loads((UI_FOLDER / f"{APP_SOURCE}.json").read_text())
    by_type = {node["type"]: node for node in graph["nodes"]}
    face_crop = by_type["XPortrait2SourceFaceCrop"]
    face_crop["widgets_values"] = [face_crop["widgets_values"][0], -1]  # face_index shown: -1, the largest
    for kind, widget, label in APP_INPUTS:
        if label != widget:  # the name the app shows: the widget's input slot carries it
            slots = by_type[kind].setdefault("inputs", [])
            slots.append({"name": widget, "type": "COMBO" if kind.startswith("Load") else "INT",
                          "widget": {"name": widget}, "link": None, "label": label})
    set_note(graph, APP)
    graph["extra"] = {
        "ds": {"scale": 0.5, "offset": [40, 40]},
        "linearMode": True,
        "linearData": {"inputs": [[by_type[kind]["id"], widget] for kind, widget, _label in APP_INPUTS],
                       "outputs": [by_type[APP_OUTPUT]["id"]]},
    }
    graph["id"] = _stable_id(APP)
    layout(graph)
    graph["nodes"].sort(key=lambda n: n["id"])
    return graph


def app() -> None:
    path = UI_FOLDER / f"{APP}.json"
    path.write_text(json.dumps(build_app(), indent=1, ensure_ascii=False) + "\n")
    print("wrote", path.relative_to(REPO_ROOT))


CARD_LABELS = {
    "Portrait to animated video": "portrait + driving video -> MP4",
    "Portrait video - upscaled": "upscaled 4x, pasted back, full size",
    "Portrait video - any sampler": "any ComfyUI sampler and sigmas",
    "Portrait video - long take": "long takes, flat memory, sound kept",
    "Portrait video - two faces": "two faces, two performers, one MP4",
    "Portrait animation (app)": "App Mode: portrait, video, Run",
}
TWO_PEOPLE = {"Portrait video - two faces"}  # cards whose portrait and driving video show two faces


def _graph_picture(shot: Path):
    """The screenshot cropped to the drawn graph (pixels unlike the canvas background)."""
    import numpy as np
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    pixels = np.asarray(image).astype(int)
    height, width = pixels.shape[:2]
    area = pixels[int(height * 0.08): int(height * 0.9), int(width * 0.05): int(width * 0.97)]
    background = np.median(area.reshape(-1, 3), axis=0)
    drawn = np.abs(area - background).sum(axis=2) > 40
    drawn[int(height * 0.66):, int(width * 0.78):] = False  # the minimap and the canvas controls
    rows, cols = np.nonzero(drawn)
    top, left = int(height * 0.08), int(width * 0.05)
    return image.crop((left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1))


def thumbnails(shots: Path) -> None:
    import av
    from PIL import Image, ImageDraw, ImageFont

    media = REPO_ROOT.parent / "shared" / "media"
    photo = Image.open(media / "photo_ref.png").convert("RGB")
    pair = Image.new("RGB", (2 * photo.width, photo.height))
    pair.paste(photo, (0, 0))
    pair.paste(Image.open(media / "cartoon_ref.png").convert("RGB").resize(photo.size), (photo.width, 0))
    def frame_of(name: str, index: int):
        with av.open(str(media / name)) as container:
            return next(f for i, f in enumerate(container.decode(video=0)) if i == index).to_image()

    driving = frame_of("driving_230f.mp4", 100)
    performers = Image.new("RGB", (2 * driving.width, driving.height))
    performers.paste(driving, (0, 0))
    performers.paste(frame_of("driving_60f.mp4", 30).resize(driving.size), (driving.width, 0))
    size, half = 512, 250
    font = ImageFont.load_default(size=22)
    for path in sorted(UI_FOLDER.glob("*.json")):
        if not (shots / f"{path.stem} graph.png").is_file():
            print("no screenshot of", path.stem, "- its picture is kept")
            continue
        card = Image.new("RGB", (size, size), (24, 24, 27))
        portrait = pair if path.stem in TWO_PEOPLE else photo
        card.paste(portrait.resize((half, half)), (4, 4))
        take = performers if path.stem in TWO_PEOPLE else driving
        card.paste(take.resize((half, half)), (size - half - 4, 4))
        graph = _graph_picture(shots / f"{path.stem} graph.png")
        graph.thumbnail((size - 8, size - half - 56))
        card.paste(graph, ((size - graph.width) // 2, half + 10))
        ImageDraw.Draw(card).text((10, size - 34), CARD_LABELS[path.stem], fill=(235, 235, 235), font=font)
        target = path.with_suffix(".jpg")
        card.save(target, quality=80, optimize=True)
        print("wrote", target.relative_to(REPO_ROOT), target.stat().st_size, "bytes")


if __name__ == "__main__":
    if sys.argv[1:2] == ["thumbnails"] and len(sys.argv) == 3:
        thumbnails(Path(sys.argv[2]))
    elif sys.argv[1:] == ["tidy"]:
        tidy()
    elif sys.argv[1:] == ["blueprints"]:
        blueprints()
    elif sys.argv[1:] == ["app"]:
        app()
    elif sys.argv[1:] == ["twins"]:
        twins()
    else:
        raise SystemExit(__doc__)
