from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from harness.comfyui_pack import has_core_box_type, write_models
from harness.comfyui_server import HOW_TO_PROVIDE, find_comfyui
from harness.media import media
from tests.golden import PARITY_RESULTS, GoldenFixture, fixture_dirs
from xportrait2_core.cli import main as cli
from xportrait2_core.weights.loading import load_models

torch.set_num_threads(2)


def pytest_generate_tests(metafunc):
    if "golden" in metafunc.fixturenames:
        dirs = fixture_dirs()
        if not dirs:
            raise pytest.UsageError("no golden fixtures found under ../shared/golden or XP2_GOLDEN_DIRS")
        metafunc.parametrize("golden", dirs, ids=[d.name for d in dirs], indirect=True, scope="session")


@pytest.fixture(scope="session")
def golden(request) -> GoldenFixture:
    return GoldenFixture(request.param)


@pytest.fixture(scope="session")
def golden_weights(golden, tmp_path_factory):
    """The fixture's official .pth files laid out in a temporary weights folder."""
    return golden.materialise_weights(tmp_path_factory.mktemp(golden.name))


@pytest.fixture(scope="session")
def golden_models(golden_weights):
    return load_models(golden_weights, device="cpu", dtype=torch.float32)


def pytest_collection_modifyitems(config, items):
    # `-m comfyui` selects every test that runs against a real ComfyUI (CI runs that subset on
    # the older of the two ComfyUIs it supports).
    for item in items:
        if "comfyui_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.comfyui)
    # Tests of the core box sockets need a ComfyUI with the BOUNDING_BOX type; on one without it
    # they are not collected (test_box_sockets_follow_the_core_type checks the sockets' absence).
    comfyui = find_comfyui()
    if comfyui is not None and not has_core_box_type(comfyui):
        unfit = [item for item in items if "core_boxes" in getattr(item, "fixturenames", ())]
        if unfit:
            config.hook.pytest_deselected(items=unfit)
            items[:] = [item for item in items if item not in unfit]


@pytest.fixture(scope="session")
def comfyui_path():
    """A ComfyUI checkout (COMFYUI_PATH or comfy-cli's default workspace); skips the test when there is none."""
    path = find_comfyui()
    if path is None:
        pytest.skip(HOW_TO_PROVIDE)
    return path


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """What the command line needs, tiny and random: the tiny-weights command's files and the face detector."""
    folder = tmp_path_factory.mktemp("cli-weights")
    assert cli(["tiny-weights", str(folder)]) == 0
    shutil.copyfile(media("yunet_final.pth"), folder / "yunet_final.pth")
    return folder


@pytest.fixture(scope="session")
def tiny_fixture() -> GoldenFixture:
    """One golden fixture (the first found), for tests that need official-layout tiny weights."""
    return GoldenFixture(fixture_dirs()[0])


@pytest.fixture(scope="session")
def tiny_weights(tiny_fixture, tmp_path_factory):
    return tiny_fixture.materialise_weights(tmp_path_factory.mktemp("tiny-weights"))


@pytest.fixture(scope="session")
def tiny_models(tiny_weights):
    return load_models(tiny_weights, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def xp2_models(tmp_path_factory) -> dict[str, Path]:
    """The random model files the node-pack tests load (folder_paths name -> folder), written once."""
    return write_models(tmp_path_factory.mktemp("xp2-models"))


def pytest_terminal_summary(terminalreporter):
    """The parity table: per fixture and output (windows and steps folded), the worst errors."""
    if not PARITY_RESULTS:
        return
    worst: dict[tuple[str, str], dict] = {}
    for result in PARITY_RESULTS:
        parts = result["name"].split(".")
        name = ".".join(p for p in parts if not (p.isdigit() or re.fullmatch(r"(step|ctx)\d+", p)))
        key = (result["fixture"], name)
        entry = worst.setdefault(key, {"max_abs": 0.0, "relative_l2": 0.0, "count": 0})
        entry["max_abs"] = max(entry["max_abs"], result["max_abs"])
        entry["relative_l2"] = max(entry["relative_l2"], result["relative_l2"])
        entry["count"] += 1
    terminalreporter.section("parity with the official implementation (worst case per output)")
    terminalreporter.line(f"{'fixture':16} {'output':28} {'tensors':>7} {'max abs':>10} {'rel. L2':>10}")
    for (fixture, name), entry in worst.items():
        terminalreporter.line(
            f"{fixture:16} {name:28} {entry['count']:>7} {entry['max_abs']:>10.2e} {entry['relative_l2']:>10.2e}"
        )
