"""Loading the official weight files: strictness, clear errors, provenance, conversion, and the
SVD VAE key map."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tests.golden import GOLDEN_ROOT
from xportrait2_core.cli import main as cli
from xportrait2_core.models.config import UNetConfig
from xportrait2_core.models.motion_encoder import MotionEncoder
from xportrait2_core.models.reference_unet import ReferenceUNet
from xportrait2_core.models.unet3d import DenoisingUNet3D
from xportrait2_core.weights import checkpoint
from xportrait2_core.weights.checkpoint import CheckpointError, read_state_dict
from xportrait2_core.weights.loading import load_models
from xportrait2_core.weights.svd_vae_keys import diffusers_to_sgm, is_diffusers_temporal_vae

SMALL_FILES = (checkpoint.DENOISER, checkpoint.TEMPORAL, checkpoint.REFERENCE)


@pytest.fixture()
def weights_copy(tiny_weights, tmp_path):
    """A writable copy of the tiny weights folder (the motion encoder linked, not copied)."""
    folder = tmp_path / "pretrained_weights"
    shutil.copytree(tiny_weights, folder, ignore=shutil.ignore_patterns(f"{checkpoint.MOTION_ENCODER}.*"))
    (folder / f"{checkpoint.MOTION_ENCODER}.pth").symlink_to(tiny_weights / f"{checkpoint.MOTION_ENCODER}.pth")
    for config in (tiny_weights.parent / "configs").rglob("*.yaml"):
        target = tmp_path / config.relative_to(tiny_weights.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config, target)
    return folder


def test_loads_every_key_and_reports_provenance(tiny_models, tiny_weights):
    reports = {r.network: r for r in tiny_models.reports}
    denoiser = reports["the denoising UNet"]
    temporal = denoiser.keys_from(str(tiny_weights / f"{checkpoint.TEMPORAL}.pth"))
    main = denoiser.keys_from(str(tiny_weights / f"{checkpoint.DENOISER}.pth"))
    assert temporal and all(".temporal_modules." in k for k in temporal)
    assert any(".motion_modules." in k for k in main)
    assert not any(".temporal_modules." in k for k in main)
    assert set(temporal) | set(main) == set(tiny_models.denoiser.state_dict())
    assert len(reports["the reference UNet"].supplied_by) == len(tiny_models.reference_unet.state_dict())
    assert len(reports["the motion encoder"].supplied_by) == len(tiny_models.motion_encoder.state_dict())
    assert "keys" in denoiser.summary()


def test_loaded_values_equal_the_files(tiny_models, tiny_weights):
    state = read_state_dict(tiny_weights / f"{checkpoint.TEMPORAL}.pth")
    ours = tiny_models.denoiser.state_dict()
    for key, tensor in state.items():
        assert torch.equal(ours[key], tensor), key


def _rewrite(path: Path, edit) -> None:
    state = dict(torch.load(path, weights_only=True))
    torch.save(edit(state), path)


def test_missing_key_names_file_and_key(weights_copy):
    path = weights_copy / f"{checkpoint.REFERENCE}.pth"
    _rewrite(path, lambda s: {k: v for k, v in s.items() if k != "conv_in.weight"})
    with pytest.raises(CheckpointError, match=r"xnemo_reference_unet\.pth.*missing.*conv_in\.weight"):
        load_models(weights_copy)


def test_unexpected_key_names_file(weights_copy):
    path = weights_copy / f"{checkpoint.TEMPORAL}.pth"
    _rewrite(path, lambda s: {**s, "not_a_layer.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"xnemo_temporal_module\.pth.*not_a_layer"):
        load_models(weights_copy)


def test_denoiser_key_supplied_by_no_file(weights_copy):
    path = weights_copy / f"{checkpoint.TEMPORAL}.pth"
    dropped = "down_blocks.0.temporal_modules.0.temporal_transformer.proj_out.weight"
    _rewrite(path, lambda s: {k: v for k, v in s.items() if k != dropped})
    with pytest.raises(CheckpointError, match=r"supplied by none of .*" + dropped.replace(".", r"\.")):
        load_models(weights_copy)


def test_shape_mismatch(weights_copy):
    path = weights_copy / f"{checkpoint.REFERENCE}.pth"
    _rewrite(path, lambda s: {**s, "conv_in.weight": torch.zeros(1, 4, 3, 3)})
    with pytest.raises(CheckpointError, match=r"conv_in\.weight has shape \(1, 4, 3, 3\)"):
        load_models(weights_copy)


def test_checkpoint_of_the_wrong_network(weights_copy):
    shutil.copyfile(weights_copy / f"{checkpoint.TEMPORAL}.pth", weights_copy / f"{checkpoint.REFERENCE}.pth")
    with pytest.raises(CheckpointError, match=r"xnemo_reference_unet\.pth.*looks like the temporal modules"):
        load_models(weights_copy)


def test_truncated_file(weights_copy):
    path = weights_copy / f"{checkpoint.DENOISER}.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"xnemo_denoising_unet\.pth.*truncated or corrupt"):
        load_models(weights_copy)


def test_truncated_safetensors(weights_copy):
    path = weights_copy / f"{checkpoint.REFERENCE}.safetensors"
    save_file(read_state_dict(weights_copy / f"{checkpoint.REFERENCE}.pth"), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"xnemo_reference_unet\.safetensors.*truncated or corrupt"):
        load_models(weights_copy)


class _Payload:
    """A pickle that would run code when unpickled."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_carrying_code_is_refused(weights_copy, capsys):
    path = weights_copy / f"{checkpoint.MOTION_ENCODER}.pth"
    path.unlink()
    torch.save({"model.conv1.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"xnemo_motion_encoder\.pth: refused"):
        load_models(weights_copy)
    assert "must never run" not in capsys.readouterr().out


def test_missing_file_says_where_to_get_it(weights_copy):
    (weights_copy / f"{checkpoint.TEMPORAL}.pth").unlink()
    with pytest.raises(CheckpointError, match=r"xnemo_temporal_module\.pth.*not found.*x-nemo-inference"):
        load_models(weights_copy)


def test_empty_file(weights_copy):
    (weights_copy / f"{checkpoint.DENOISER}.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"xnemo_denoising_unet\.pth: the file is empty"):
        load_models(weights_copy)


def test_convert_round_trip(weights_copy, tmp_path, capsys):
    out = tmp_path / "converted"
    out.mkdir()
    sources = [str(weights_copy / f"{name}.pth") for name in SMALL_FILES]
    assert cli(["convert", *sources, "-o", str(out)]) == 0
    for name in SMALL_FILES:
        original = read_state_dict(weights_copy / f"{name}.pth")
        converted = read_state_dict(out / f"{name}.safetensors")
        assert converted.keys() == original.keys()
        for key, tensor in original.items():
            assert converted[key].dtype == torch.float16
            assert torch.equal(converted[key], tensor.half()), key
    # refuses to overwrite without --overwrite, exit status 2 and one line of explanation
    assert cli(["convert", sources[0], "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli(["convert", sources[0], "-o", str(out), "--overwrite", "--dtype", "keep"]) == 0
    kept = read_state_dict(out / f"{SMALL_FILES[0]}.safetensors")
    assert all(torch.equal(kept[k], v) for k, v in read_state_dict(Path(sources[0])).items())


def test_converted_safetensors_load_to_identical_tensors(weights_copy, tiny_models):
    assert cli(["convert", str(weights_copy), "--dtype", "keep"]) == 0
    for name in SMALL_FILES:
        (weights_copy / f"{name}.pth").unlink()  # the loader must now read the .safetensors
    models = load_models(weights_copy)
    for network in ("denoiser", "reference_unet"):
        ours, reference = getattr(models, network).state_dict(), getattr(tiny_models, network).state_dict()
        assert all(torch.equal(ours[k], reference[k]) for k in reference), network
    assert any(".safetensors" in s for r in models.reports for s in r.supplied_by.values())


def test_full_size_key_inventory():
    """Built on the meta device, the full-size networks have exactly the official keys and shapes."""
    inventory = json.loads((GOLDEN_ROOT / "full_keys.json").read_text())["files"]
    with torch.device("meta"):
        config = UNetConfig.official()
        denoiser, reference, motion = DenoisingUNet3D(config), ReferenceUNet(config), MotionEncoder()

    def shapes(module):
        return {k: list(v.shape) for k, v in module.state_dict().items()}

    def official(*files):
        return {k: v["shape"] for f in files for k, v in inventory[f"{f}.pth"]["tensors"].items()}

    assert shapes(denoiser) == official(checkpoint.DENOISER, checkpoint.TEMPORAL)
    assert shapes(reference) == official(checkpoint.REFERENCE)
    assert shapes(motion) == official(checkpoint.MOTION_ENCODER)
    assert (len(shapes(denoiser)), len(shapes(reference)), len(shapes(motion))) == (1820, 682, 407)


@pytest.fixture(scope="module")
def tiny_svd_vae():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1
    ).eval()


def test_svd_vae_keys_renamed_to_comfyui_layout(tiny_svd_vae):
    state = tiny_svd_vae.state_dict()
    assert is_diffusers_temporal_vae(state)
    converted = diffusers_to_sgm(state)
    assert len(converted) == len(state) - 2  # quant_conv folded into encoder.conv_out
    for key in (
        "decoder.mid.block_1.mix_factor", "decoder.mid.block_1.time_stack.in_layers.2.weight",
        "decoder.mid.attn_1.q.weight", "decoder.up.0.block.1.conv1.weight", "decoder.up.1.upsample.conv.weight",
        "decoder.conv_out.time_mix_conv.weight", "decoder.norm_out.weight", "encoder.down.0.downsample.conv.weight",
        "encoder.down.1.block.0.nin_shortcut.weight", "encoder.mid.attn_1.proj_out.weight",
    ):
        assert key in converted, key
    assert converted["decoder.mid.attn_1.q.weight"].ndim == 4
    # The highest-resolution diffusers up block (the last) is SGM's up.0.
    torch.testing.assert_close(
        converted["decoder.up.0.block.0.conv1.weight"], state["decoder.up_blocks.1.resnets.0.spatial_res_block.conv1.weight"]
    )


def test_folded_quant_conv_gives_the_same_encoder_output(tiny_svd_vae):
    state = tiny_svd_vae.state_dict()
    converted = diffusers_to_sgm(state)
    features = torch.randn(1, state["encoder.conv_out.weight"].shape[1], 8, 8)
    original = F.conv2d(
        F.conv2d(features, state["encoder.conv_out.weight"], state["encoder.conv_out.bias"], padding=1),
        state["quant_conv.weight"], state["quant_conv.bias"],
    )
    folded = F.conv2d(features, converted["encoder.conv_out.weight"], converted["encoder.conv_out.bias"], padding=1)
    torch.testing.assert_close(folded, original, rtol=1e-5, atol=1e-5)
