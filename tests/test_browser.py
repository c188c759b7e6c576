"""The shipped workflows in ComfyUI's own web page, driven by a real Chromium through Playwright.

For every workflow in ``example_workflows/``, as a person would: open the Templates dialog,
pick this pack under the extensions, see the card's thumbnail, click the card. Then check that
every node type is known and no missing-nodes/missing-models dialog shows, that loading logged
no console error and no failed request, that the widgets hold the JSON's values, that what the
page would send (``app.graphToPrompt``) equals the API twin for this ComfyUI version, and that
no two nodes overlap and every link runs left to right. Lower the working size and the steps in
the widgets (64 px, 2 steps), press Run, wait for the prompt to succeed, and check that the page
shows the saved video. One screenshot per workflow is kept in the test's temp folder.

The server runs with tiny random models under the file names the workflows use and the media
under the names they use. Chromium is Debian's ``chromium`` (``XP2_CHROMIUM`` overrides the
path), started by this test on a free 127.0.0.1 DevTools port and stopped by its process id.
A missing Chromium or Playwright fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from harness import REPO_ROOT
from harness.comfyui_pack import (
    CLIP_FILE,
    MEDIA,
    PHOTO,
    UPSCALER_FILE,
    VAE_FILE,
    WORKFLOWS,
    PackServer,
    api_twin_path,
    comfyui_version,
    error_message,
)
from harness.comfyui_server import PACK_NAME, find_comfyui, free_port
from harness.frontends import BLUEPRINTS_AND_APPS, BUNDLED, frontends_for, server_arguments
from tools.workflows import APP_INPUTS, BLUEPRINTS, SEARCH_ALIASES
from harness.media import write_driving_clip
from harness.multi_face_media import TWO_FACE_PORTRAIT, TWO_PERFORMER_TAKE, two_face_portrait, two_performer_take

CHROMIUM = os.environ.get("XP2_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
SHIPPED = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
DRIVING_FRAMES = 8
SMALL = {  # (node type, widget) -> value: the quick run's settings, typed into the widgets
    ("XPortrait2SourceFaceCrop", "size"): 64,
    ("XPortrait2Sampler", "steps"): 2,
    ("XPortrait2Scheduler", "steps"): 2,
}
# Inputs the v0.33 page sends that the twins (comfy-cli's conversion) leave out, each with the
# only value allowed: the optional third level of Save Video's nested format/codec/encoding
# choice, which comfy-cli 1.23's converter does not descend to ("auto" is also what the server
# uses when it is absent), and Save Video's hidden legacy top-level codec, which the server
# reads only when format.codec is absent. Inputs the server does not declare at all (Load
# Video's preview widget) are ignored by it and allowed.
FRONTEND_EXTRAS = {("SaveVideo", "format.codec.encoding"): "auto", ("SaveVideo", "codec"): "auto"}
DURATIONS: dict[str, dict[str, float]] = {}
MEDIA_NAMES = {"LoadImage": "portrait.png", "LoadVideo": "driving.mp4"}  # what the shipped workflows load


def _ui(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def _link(target: Path, source: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(source)


def _models_named_as_the_workflows(xp2_models: dict[str, Path], root: Path) -> dict[str, Path]:
    """The random test models under the file names the shipped workflows pick."""
    sources = {
        ("CLIPVisionLoader", "clip_vision"): xp2_models["clip_vision"] / CLIP_FILE,
        ("XPortrait2LoadTemporalVAE", "vae"): xp2_models["vae"] / VAE_FILE,
        ("UpscaleModelLoader", "upscale_models"): xp2_models["upscale_models"] / UPSCALER_FILE,
    }
    folders = {"xportrait2": xp2_models["xportrait2"]}
    for name in SHIPPED:
        for node in _ui(name)["nodes"]:
            for (kind, folder), source in sources.items():
                if node["type"] == kind:
                    folders[folder] = root / folder
                    _link(root / folder / node["widgets_values"][0], source)
            if node["type"] == "XPortrait2Loader":
                assert (xp2_models["xportrait2"] / node["widgets_values"][0]).is_file(), node["widgets_values"]
    return folders


def _media_named_as_the_workflows(input_dir: Path) -> None:
    input_dir.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        for node in _ui(name)["nodes"]:
            if node["type"] not in ("LoadImage", "LoadVideo"):
                continue
            target = input_dir / node["widgets_values"][0]
            if target.exists():
                continue
            if target.name == TWO_FACE_PORTRAIT:
                two_face_portrait(target)
            elif target.name == TWO_PERFORMER_TAKE:
                two_performer_take(target, DRIVING_FRAMES, tone=True)
            elif node["type"] == "LoadImage":
                shutil.copyfile(MEDIA / PHOTO, target)
            else:
                write_driving_clip(target, DRIVING_FRAMES, fps=Fraction(25))


def pytest_generate_tests(metafunc):
    # Every browser test on each frontend this ComfyUI is tested with: the one it pins, and on
    # v0.33 also the newest on the package registry.
    if "frontend" in metafunc.fixturenames:
        comfyui = find_comfyui()
        metafunc.parametrize("frontend", frontends_for(comfyui) if comfyui else (BUNDLED,), scope="module")


@pytest.fixture(scope="module")
def server(comfyui_path, frontend, xp2_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"comfyui-browser-{frontend}")
    folders = _models_named_as_the_workflows(xp2_models, workdir / "models")
    _media_named_as_the_workflows(workdir / "input")
    running = PackServer(comfyui_path, workdir, folders, extra_args=server_arguments(frontend))
    try:
        running.start(timeout=600)  # CI machines shared with other test runs start it slowly
        yield running
    finally:
        running.stop()
    print("\nbrowser test durations (s):", json.dumps(DURATIONS, indent=1))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium on a free 127.0.0.1 DevTools port with a fresh profile, driven through
    Playwright over CDP; stopped by its own process id."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's `chromium` package (apt-get install chromium) "
                    "or point XP2_CHROMIUM at a Chromium binary", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: pip install playwright (the test extra lists it)", pytrace=False)
    profile = tmp_path_factory.mktemp("chromium-profile")
    port = free_port()
    log = open(profile.parent / "chromium.log", "w")
    process = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         f"--remote-debugging-port={port}", "--window-size=1600,1000", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    playwright = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Chromium did not start: {(profile.parent / 'chromium.log').read_text()[-2000:]}")
                time.sleep(0.3)
        playwright = sync_playwright().start()
        connected = playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
        yield connected
        connected.close()
    finally:
        if playwright is not None:
            playwright.stop()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class PageWatch:
    """Console errors and failed requests of a page, from a chosen moment on."""

    def __init__(self, page):
        self.problems: list[str] = []
        self.responses: list[tuple[str, int]] = []
        self.recording = False
        page.on("response", lambda r: self.responses.append((r.url, r.status)))
        page.on("console", self._console)
        page.on("pageerror", lambda error: self._add(f"page error: {error}"))
        page.on("response", lambda r: self._add(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
        page.on("requestfailed", self._request_failed)

    def _request_failed(self, request) -> None:
        # The frontend saves its own UI state as settings (the Templates dialog's sort order,
        # which onboarding hints were seen) and cancels a save when the next one or a click
        # overtakes it: the browser reports ERR_ABORTED for a request that nothing of the pack
        # takes part in.
        if "/api/settings/Comfy." in request.url and "ERR_ABORTED" in (request.failure or ""):
            return
        self._add(f"request failed: {request.url} {request.failure}")

    def _console(self, message) -> None:
        if message.type == "error":
            self._add(f"console error: {message.text}")

    def _add(self, text: str) -> None:
        if self.recording:
            self.problems.append(text)


@contextmanager
def comfyui_page(browser, server: PackServer):
    """A new tab with ComfyUI's page loaded and its problems watched; closed afterwards."""
    page = browser.contexts[0].new_page()
    page.set_viewport_size({"width": 1600, "height": 1000})
    watch = PageWatch(page)
    try:
        page.goto(server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=180_000)
        yield page, watch
    finally:
        page.close()


def _open_template(page, name: str) -> dict:
    """Templates dialog -> this pack -> the card. Returns what the card showed."""
    content = page.get_by_test_id("template-workflows-content")
    try:  # a fresh profile may open the dialog by itself
        content.wait_for(state="visible", timeout=8000)
    except Exception:
        page.get_by_role("button", name="Templates", exact=True).first.click()
        content.wait_for(state="visible", timeout=30000)
    page.get_by_text(PACK_NAME, exact=True).first.click()
    card = page.get_by_test_id(f"template-workflow-{name}")
    card.wait_for(state="visible", timeout=30000)
    card.scroll_into_view_if_needed()
    page.wait_for_function(
        "(card) => [...card.querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 0)",
        arg=card.element_handle(), timeout=30000,
    )
    shown = card.evaluate(
        "(card) => ({text: card.innerText, images: [...card.querySelectorAll('img')].map(i => "
        "({src: i.getAttribute('src'), width: i.naturalWidth}))})"
    )
    card.click()
    return shown


GRAPH_STATE = """() => {
  const nodes = app.graph._nodes;
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  return {
    nodes: nodes.map(n => ({id: n.id, type: n.type, known: !!LiteGraph.registered_node_types[n.type],
                            rect: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]})),
    links: nodes.flatMap(n => (n.inputs || []).filter(i => i.link != null).map(i => {
      const link = app.graph.links instanceof Map ? app.graph.links.get(i.link) : app.graph.links[i.link];
      return [link.origin_id, n.id];
    })),
    widgets: Object.fromEntries(app.graph.serialize().nodes.map(n => [n.id, n.widgets_values || []])),
  };
}"""

SET_WIDGETS = """(changes) => {
  const done = [];
  for (const node of app.graph._nodes) {
    for (const [type, widget, value] of changes) {
      if (node.type !== type) continue;
      const w = node.widgets.find(w => w.name === widget);
      w.value = value;
      if (w.callback) w.callback(value, app.canvas, node);
      done.push([node.id, widget, w.value]);
    }
  }
  app.graph.setDirtyCanvas(true, true);
  return done;
}"""


def _skip_the_tour(page) -> None:
    """App Mode greets a new profile with a tour; a person skips it."""
    skip = page.get_by_role("button", name="Skip", exact=True)
    try:
        skip.first.wait_for(state="visible", timeout=4000)
    except Exception:
        return
    skip.first.click()


def _choose_view(page, item: str) -> None:
    """The workflow menu's 'Exit app mode' / 'Enter app mode'."""
    page.get_by_test_id("view-mode-toggle").click()
    page.get_by_role("menuitem", name=item).first.click()
    page.wait_for_timeout(1000)


SHOWS_VIDEO = """(file) => [...document.querySelectorAll('video')]
  .some(v => (v.currentSrc || v.src || '').includes(encodeURIComponent(file)) && v.readyState >= 1)"""
APP_INPUT_LABELS = """() => [...document.querySelectorAll('[data-testid=app-mode-widget-item]')]
  .filter(e => e.offsetParent !== null)
  .map(e => e.querySelector('[data-testid=builder-widget-label]').innerText.trim())"""


def _declared_inputs(server: PackServer, kind: str) -> set[str]:
    inputs = server.get_json(f"/object_info/{kind}")[kind]["input"]
    return set(inputs.get("required", {})) | set(inputs.get("optional", {}))


def _overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _visible_dialog_texts(page) -> list[str]:
    return page.eval_on_selector_all(
        "[role=dialog], .p-dialog",
        "els => els.filter(e => e.offsetParent !== null).map(e => e.innerText.slice(0, 300))",
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_workflow_opens_from_the_templates_dialog_and_runs(server, frontend, browser, name, tmp_path):
    version = comfyui_version(server.comfyui)
    timings = DURATIONS.setdefault(f"{version} {frontend} {name}", {})
    started = time.monotonic()
    workflow = _ui(name)
    with comfyui_page(browser, server) as (page, watch):
        card = _open_template(page, name)
        watch.recording = True  # from the click on the card on
        # The card shows the name as its title and the workflow's own thumbnail.
        assert name in card["text"], card
        thumbnail = f"/workflow_templates/{PACK_NAME}/{name}.jpg"  # the page may or may not escape "(" and ")"
        assert any(unquote(url).endswith(thumbnail) and status == 200 for url, status in watch.responses), thumbnail
        with Image.open(WORKFLOWS / f"{name}.jpg") as picture:
            assert any(i["width"] == picture.width for i in card["images"]), card
        app_mode = bool(workflow["extra"].get("linearMode")) and version in BLUEPRINTS_AND_APPS
        if app_mode:
            # It opens as an app: only the chosen inputs, in order, under their labels.
            page.get_by_test_id("linear-widgets").wait_for(state="visible", timeout=60_000)
            _skip_the_tour(page)
            assert page.evaluate(APP_INPUT_LABELS) == [label for _kind, _widget, label in APP_INPUTS]
            assert page.locator("#graph-canvas").bounding_box() is None or not page.locator("#graph-canvas").is_visible()
            page.screenshot(path=str(tmp_path / f"{name} opened ComfyUI-{version} frontend-{frontend}.png"))
            _choose_view(page, "Exit app mode")  # and as an ordinary graph, checked below like every template
        page.wait_for_function(f"() => app.graph._nodes.length >= {len(workflow['nodes'])}", timeout=60_000)
        page.wait_for_timeout(3000)  # previews of the loaders' media, model lists, dialogs
        timings["open_s"] = round(time.monotonic() - started, 1)
        state = page.evaluate(GRAPH_STATE)

        # No missing nodes, no missing models, nothing in the console.
        assert sorted(n["type"] for n in state["nodes"]) == sorted(n["type"] for n in workflow["nodes"])
        assert all(n["known"] for n in state["nodes"]), [n["type"] for n in state["nodes"] if not n["known"]]
        dialogs = [t for t in _visible_dialog_texts(page) if "missing" in t.lower()]
        assert not dialogs, dialogs
        assert not watch.problems, watch.problems

        # The widgets hold the JSON's values (a newer ComfyUI may add widgets after them).
        for node in workflow["nodes"]:
            expected = node.get("widgets_values") or []
            assert state["widgets"][str(node["id"])][: len(expected)] == expected, (node["type"], state["widgets"][str(node["id"])])

        # What Run would send equals the API twin of this ComfyUI version.
        prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
        twin = json.loads(api_twin_path(name, server.comfyui).read_text())
        assert {k: v["class_type"] for k, v in prompt.items()} == {k: v["class_type"] for k, v in twin.items()}
        extra = {}
        for node_id, node in prompt.items():
            expected = twin[node_id]["inputs"]
            assert set(expected) <= set(node["inputs"]), (node_id, node["inputs"], expected)
            assert {k: node["inputs"][k] for k in expected} == expected, (node_id, node["inputs"], expected)
            extra.update({(node["class_type"], k): v for k, v in node["inputs"].items() if k not in expected})
        # Beyond the twin the page may send inputs the server does not declare (it ignores them)
        # and the listed frontend extras with their one allowed value.
        declared = {kind: _declared_inputs(server, kind) for kind, _ in extra}
        unexpected = {key: value for key, value in extra.items()
                      if key[1].split(".")[0] in declared[key[0]] and FRONTEND_EXTRAS.get(key, object()) != value}
        assert not unexpected, unexpected

        # Laid out left to right in the data's order, without overlaps.
        rects = {n["id"]: n["rect"] for n in state["nodes"]}
        overlapping = [(a, b) for a in rects for b in rects if a < b and _overlaps(rects[a], rects[b])]
        assert not overlapping, overlapping
        backwards = [(o, t) for o, t in state["links"] if rects[o][0] + rects[o][2] > rects[t][0]]
        assert not backwards, backwards

        page.get_by_role("button", name="Fit View").first.click()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / f"{name} graph.png"))

        # A quick run: the widgets turned down as a person would, then Run.
        changes = [[kind, widget, value] for (kind, widget), value in SMALL.items()]
        page.evaluate(SET_WIDGETS, changes)
        watch.recording = False
        if app_mode:  # the app's own Run
            _choose_view(page, "Enter app mode")
            _skip_the_tour(page)
            run = page.get_by_test_id("linear-run-button").get_by_role("button", name="Run", exact=True)
        else:
            run = page.get_by_role("button", name="Run", exact=True).first
        with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as answer:
            run.click()
        assert answer.value.status == 200, answer.value.text()
        prompt_id = answer.value.json()["prompt_id"]
        history = server.wait_for(prompt_id, timeout=1200)
        assert history["status"]["status_str"] == "success", error_message(history)
        timings["run_s"] = round(time.monotonic() - started - timings["open_s"], 1)

        # The page shows the saved video (Save Video's preview).
        saved = [item["filename"] for out in history["outputs"].values() for item in out.get("images", [])
                 if item["filename"].endswith(".mp4")]
        assert len(saved) == 1, history["outputs"]
        page.wait_for_function(SHOWS_VIDEO, arg=saved[0], timeout=60_000)
        if not app_mode:
            page.get_by_role("button", name="Fit View").first.click()
            page.wait_for_timeout(1000)
        shot = tmp_path / f"{name} ComfyUI-{version} frontend-{frontend}.png"
        page.screenshot(path=str(shot))
        print(f"\nscreenshot: {shot}")
        timings["total_s"] = round(time.monotonic() - started, 1)



WIRE_BLUEPRINT = """([portrait, take]) => {
  const blueprint = app.graph._nodes[0];
  const add = (type, x, y) => { const node = LiteGraph.createNode(type); node.pos = [x, y]; app.graph.add(node); return node; };
  const image = add("LoadImage", blueprint.pos[0] - 420, blueprint.pos[1]);
  const video = add("LoadVideo", blueprint.pos[0] - 420, blueprint.pos[1] + 420);
  const save = add("SaveVideo", blueprint.pos[0] + blueprint.size[0] + 80, blueprint.pos[1]);
  image.widgets.find(w => w.name === "image").value = portrait;
  video.widgets.find(w => w.name === "file").value = take;
  const slot = (node, name) => node.inputs.findIndex(i => i.name === name);
  image.connect(0, blueprint, slot(blueprint, "portrait"));
  video.connect(0, blueprint, slot(blueprint, "driving_video"));
  blueprint.connect(0, save, slot(save, "video"));
  for (const [name, value] of [["steps", 2], ["size", 64]]) blueprint.widgets.find(w => w.name === name).value = value;
  app.graph.setDirtyCanvas(true, true);
  return app.graph._nodes.map(n => n.type);
}"""
LIBRARY_RESULTS = """() => [...document.querySelectorAll('.side-bar-panel [role=treeitem], .side-bar-panel .p-tree-node-label')]
  .filter(e => e.offsetParent !== null).map(e => e.innerText.split('\\n')[0].trim())"""


def test_blueprint_from_the_node_library_runs(server, frontend, browser, tmp_path):
    version = comfyui_version(server.comfyui)
    if version not in BLUEPRINTS_AND_APPS:
        # An older ComfyUI does not serve blueprints: the pack loads there as before, and the
        # templates test above runs every template on it.
        with pytest.raises(urllib.error.HTTPError):
            server.get_json("/global_subgraphs")
        return
    spec = BLUEPRINTS[0]
    served = {entry["name"]: entry for entry in server.get_json("/global_subgraphs").values()}
    assert {blueprint.title for blueprint in BLUEPRINTS} <= set(served), sorted(served)
    assert served[spec.title]["info"]["search_aliases"] == list(SEARCH_ALIASES)
    with comfyui_page(browser, server) as (page, watch):
        dialog = page.get_by_test_id("template-workflows-content")
        try:  # the Templates dialog a new profile opens by itself, closed as a person would
            dialog.wait_for(state="visible", timeout=8000)
            page.keyboard.press("Escape")
            dialog.wait_for(state="hidden", timeout=10_000)
        except Exception:
            pass
        page.evaluate("() => app.extensionManager.command.execute('Comfy.NewBlankWorkflow')")
        page.wait_for_function("() => app.graph._nodes.length === 0", timeout=30_000)
        watch.recording = True

        # The node library finds it by its name and by what artists type.
        page.locator(".side-tool-bar-container").get_by_text("Nodes", exact=True).first.click()
        search = page.get_by_placeholder("Search", exact=False).first
        for words in ("portrait animation", "talking head", "expression transfer"):
            search.fill(words)
            page.wait_for_function(f"() => ({LIBRARY_RESULTS})().includes({json.dumps(spec.title)})", timeout=30_000)
        page.screenshot(path=str(tmp_path / f"blueprint in the library ComfyUI-{version} frontend-{frontend}.png"))
        search.fill("portrait animation")
        page.get_by_text(spec.title, exact=True).first.drag_to(page.locator("#graph-canvas"), target_position={"x": 900, "y": 300})
        page.wait_for_function("() => app.graph._nodes.length > 0", timeout=30_000)
        page.wait_for_timeout(1500)
        assert page.evaluate("() => app.graph._nodes.length") == 1
        added = page.evaluate("() => { const n = app.graph._nodes[0]; return {title: n.title, widgets: n.widgets.map(w => w.name), "
                              "inputs: n.inputs.filter(i => !i.widget).map(i => i.name), outputs: n.outputs.map(o => o.name)} }")
        assert added["title"] == spec.title
        assert added["inputs"] == [name for name, _, _ in spec.inputs] and added["outputs"] == ["video"], added
        assert {"denoising_unet", "seed", "steps", "guidance", "size", "face_index", "performer", "blend",
                "motion_intensity"} <= set(added["widgets"]), added

        # Wired to core Load Image, Load Video and Save Video, turned down to a quick run.
        types = page.evaluate(WIRE_BLUEPRINT, [MEDIA_NAMES["LoadImage"], MEDIA_NAMES["LoadVideo"]])
        assert types[1:] == ["LoadImage", "LoadVideo", "SaveVideo"], types
        prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
        inner = {node["type"] for node in json.loads((REPO_ROOT / "subgraphs" / f"{spec.title}.json").read_text())
                 ["definitions"]["subgraphs"][0]["nodes"]}
        assert {node["class_type"] for node in prompt.values()} == inner | {"LoadImage", "LoadVideo", "SaveVideo"}
        assert {node["inputs"]["steps"] for node in prompt.values() if node["class_type"] == "XPortrait2Sampler"} == {2}
        assert not watch.problems, watch.problems
        watch.recording = False
        with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as answer:
            page.get_by_role("button", name="Run", exact=True).first.click()
        assert answer.value.status == 200, answer.value.text()
        history = server.wait_for(answer.value.json()["prompt_id"], timeout=1200)
        assert history["status"]["status_str"] == "success", error_message(history)
        saved = [item["filename"] for out in history["outputs"].values() for item in out.get("images", [])
                 if item["filename"].endswith(".mp4")]
        assert len(saved) == 1, history["outputs"]
        # The library closed and the graph in view, as a person looks at the result.
        page.locator(".side-tool-bar-container").get_by_text("Nodes", exact=True).first.click()
        page.get_by_role("button", name="Fit View").first.click()
        page.wait_for_function(SHOWS_VIDEO, arg=saved[0], timeout=60_000)
        page.screenshot(path=str(tmp_path / f"blueprint node ComfyUI-{version} frontend-{frontend}.png"))
