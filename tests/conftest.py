from __future__ import annotations

import pytest
import torch

from tests.golden import GoldenFixture, fixture_dirs
from xportrait2_core.models import load_models

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
