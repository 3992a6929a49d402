"""Model factory, channel attention module and encoder-weight resolution (tiny CPU models)."""

import logging

import huggingface_hub
import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file
from torch import nn

from drac_algo.common.errors import DracInputError
from drac_algo.networks import models
from drac_algo.networks.attention import ChannelAttention
from drac_algo.networks.models import (
    ARCHITECTURES,
    build_model,
    build_network,
    check_encoder,
    resolve_encoder_weights,
    unwrapped_key,
)
from drac_algo.networks.spec import ModelSpec, input_multiple

TINY_DECODER = (32, 32, 16, 16, 16)
COMBOS = [
    ("unet", None),
    ("unet", "cam"),
    ("unet", "scse"),
    ("unetplusplus", None),
    ("unetplusplus", "cam"),
    ("unetplusplus", "cam-2sigmoid"),
    ("unetplusplus", "scse"),
    ("deeplabv3plus", None),
]


def tiny_spec(arch: str, attention: str | None = None) -> ModelSpec:
    channels = (32,) if arch == "deeplabv3plus" else TINY_DECODER
    return ModelSpec(arch, "resnet18", attention, 5, channels)


# --- ChannelAttention -------------------------------------------------------------------------


def test_cam_scales_each_channel_by_its_gate():
    torch.manual_seed(0)
    cam = ChannelAttention(32)
    x = torch.randn(3, 32, 5, 7)
    gates = cam.gates(x)
    assert gates.shape == (3, 32)
    assert ((gates > 0) & (gates < 1)).all()
    torch.testing.assert_close(cam(x), x * gates[:, :, None, None])
    # The gate comes from the spatial mean: same mean per channel, same gate.
    shifted = x - x.mean((2, 3), keepdim=True) + torch.full((3, 32, 1, 1), 0.3)
    torch.testing.assert_close(cam.gates(shifted), cam.gates(torch.full_like(x, 0.3)))


def test_cam_gate_follows_its_layers():
    cam = ChannelAttention(8)
    with torch.no_grad():
        for layer in (cam.fc1, cam.fc2):
            layer.weight.zero_()
            layer.bias.zero_()
        cam.fc2.bias.copy_(torch.linspace(-2, 2, 8))
    x = torch.randn(2, 8, 4, 4)
    expected = x * torch.sigmoid(torch.linspace(-2, 2, 8))[None, :, None, None]
    torch.testing.assert_close(cam(x), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cam_half_precision_pooling_matches_float32(dtype):
    """The CPU half-precision path pools with avg_pool2d: over a 256 x 256 map of values near 3
    the mean must still come out right (a half-precision running sum would stall near 256)."""
    torch.manual_seed(0)
    cam = ChannelAttention(16).eval()
    x = (3 + torch.randn(2, 16, 256, 256)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = cam.gates(x)
        with torch.autocast("cpu", dtype=dtype):
            half = cam.gates(x.to(dtype))
    torch.testing.assert_close(half.float(), reference, atol=1e-2, rtol=0)


@pytest.mark.parametrize(
    ("channels", "hidden"), [(1, 1), (3, 3), (8, 4), (16, 4), (64, 4), (128, 8), (768, 48)]
)
def test_cam_hidden_width_is_guarded_for_narrow_layers(channels, hidden):
    cam = ChannelAttention(channels)
    assert cam.hidden == hidden
    assert cam(torch.randn(2, channels, 3, 3)).shape == (2, channels, 3, 3)


def _expected_cam_slots(model: nn.Module, arch: str) -> dict[str, int]:
    """slot name -> channels, derived from smp's block structure independently of models.py."""
    slots = {}
    if arch == "unet":
        blocks = {str(i): b for i, b in enumerate(model.decoder.blocks)}
        no_skip = {str(len(blocks) - 1)}
    else:
        blocks = dict(model.decoder.blocks.items())
        no_skip = {f"x_0_{model.decoder.depth}"}
    for name, block in blocks.items():
        if name not in no_skip:
            slots[f"decoder.blocks.{name}.attention1"] = block.conv1[0].in_channels
        slots[f"decoder.blocks.{name}.attention2"] = block.conv2[0].out_channels
    return slots


@pytest.mark.parametrize("arch", ["unet", "unetplusplus"])
def test_cam_fills_both_slots_of_every_decoder_block_and_each_runs_once(arch):
    spec = tiny_spec(arch, "cam")
    model = build_network(spec)
    found = {n: m.channels for n, m in model.named_modules() if isinstance(m, ChannelAttention)}
    expected = _expected_cam_slots(model, arch)
    assert found == expected
    assert len(found) == (9 if arch == "unet" else 21)

    calls: dict[str, int] = {}
    unused_slots = []
    for name, module in model.named_modules():
        if isinstance(module, ChannelAttention):
            module.register_forward_hook(
                lambda m, i, o, n=name: calls.__setitem__(n, 1 + calls.get(n, 0))
            )
        elif name.endswith("attention1"):
            unused_slots.append(name)
            module.register_forward_hook(
                lambda m, i, o, n=name: calls.__setitem__(n, 1 + calls.get(n, 0))
            )
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 1, 64, 64))
    assert {n: calls.get(n, 0) for n in expected} == dict.fromkeys(expected, 1)
    # The slots left empty are exactly those smp never calls (no skip connection there).
    assert len(unused_slots) == 1
    assert calls.get(unused_slots[0], 0) == 0


def test_cam_2sigmoid_gates_start_near_one_with_the_cam_state_dict():
    torch.manual_seed(0)
    cam = build_network(tiny_spec("unetplusplus", "cam"))
    scaled = build_network(tiny_spec("unetplusplus", "cam-2sigmoid"))
    assert cam.state_dict().keys() == scaled.state_dict().keys()
    scaled.load_state_dict(cam.state_dict())  # a bundle's weights fit either
    for name, module in scaled.named_modules():
        if isinstance(module, ChannelAttention):
            published = cam.get_submodule(name)
            assert (module.gate_scale, published.gate_scale) == (2.0, 1.0)
            feats = torch.randn(3, module.channels, 8, 8)
            with torch.no_grad():
                g, g_pub = module.gates(feats), published.gates(feats)
            torch.testing.assert_close(g, 2 * g_pub)
            # At random initialisation the published gates sit near 0.5, these near 1.
            assert abs(g_pub.mean().item() - 0.5) < 0.15 and abs(g.mean().item() - 1.0) < 0.3
            assert ((g > 0) & (g < 2)).all()
    with pytest.raises(DracInputError, match="gate_scale"):
        ChannelAttention(8, gate_scale=0.0)


def test_cam_leaves_smp_untouched():
    build_network(tiny_spec("unetplusplus", "cam"))
    plain = smp.UnetPlusPlus("resnet18", encoder_weights=None, in_channels=1, classes=1)
    assert not any(isinstance(m, ChannelAttention) for m in plain.modules())
    assert isinstance(smp.base.modules.Attention(None).attention, nn.Identity)
    assert set(ARCHITECTURES) == {"unet", "unetplusplus", "deeplabv3plus"}


def test_scse_uses_smp_module_not_cam():
    model = build_network(tiny_spec("unet", "scse"))
    assert not any(isinstance(m, ChannelAttention) for m in model.modules())
    assert any(isinstance(m, smp.base.modules.SCSEModule) for m in model.modules())


# --- factory and spec --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"arch": "unett"}, ["unet", "unetplusplus", "deeplabv3plus"]),
        ({"arch": "unet", "attention": "se"}, ["None", "'cam'", "'scse'"]),
    ],
)
def test_unknown_names_list_valid_ones(kwargs, names):
    with pytest.raises(DracInputError) as err:
        ModelSpec(**kwargs)
    for name in names:
        assert name in str(err.value)


def test_an_unknown_encoder_is_refused_where_a_network_is_built():
    """The spec (a manifest's, read without segmentation-models-pytorch) takes any encoder
    name; building the network, or a training config, refuses one smp and timm do not know."""
    spec = ModelSpec("unet", "resnet-34")
    with pytest.raises(DracInputError) as err:
        build_network(spec)
    assert "unknown encoder 'resnet-34'" in str(err.value)
    assert "resnet34" in str(err.value) and "efficientnet-b0" in str(err.value)
    check_encoder("resnet34")
    check_encoder("tu-resnet10t")  # a timm model


@pytest.mark.parametrize("attention", ["cam", "scse"])
def test_deeplab_refuses_decoder_attention(attention):
    with pytest.raises(DracInputError, match="deeplabv3plus has no decoder attention"):
        ModelSpec("deeplabv3plus", attention=attention)


def test_spec_checks_depth_and_decoder_channels():
    with pytest.raises(DracInputError, match="encoder_depth"):
        ModelSpec("unet", encoder_depth=6)
    with pytest.raises(DracInputError, match="needs 5 decoder_channels"):
        ModelSpec("unet", decoder_channels=(64, 32))
    with pytest.raises(DracInputError, match="scse attention needs"):
        ModelSpec("unet", attention="scse", decoder_channels=(32, 32, 16, 16, 8))
    assert ModelSpec("unet", encoder_depth=4).resolved_decoder_channels() == (256, 128, 64, 32)


def test_spec_dict_round_trip_and_unknown_keys():
    spec = ModelSpec("unetplusplus", "resnet18", "cam", 4, (64, 32, 16, 16))
    data = spec.to_dict()
    assert data["decoder_channels"] == [64, 32, 16, 16]
    assert ModelSpec.from_dict(data) == spec
    with pytest.raises(DracInputError, match="valid: arch, encoder, attention"):
        ModelSpec.from_dict({**data, "classes": 2})


def test_input_multiple():
    assert input_multiple(ModelSpec("unet")) == 32
    assert input_multiple(ModelSpec("unet", encoder_depth=3)) == 8


@pytest.mark.parametrize(("arch", "attention"), COMBOS)
def test_forward_and_one_training_step(arch, attention):
    torch.manual_seed(0)
    model = build_network(tiny_spec(arch, attention))
    x = torch.randn(2, 1, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.7).float()
    logits = model(x)
    assert logits.shape == (2, 1, 64, 64)
    assert logits.dtype == torch.float32
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "segmentation_head.0.weight" in changed
    assert any(n.startswith("encoder.") for n in changed)
    if attention in ("cam", "cam-2sigmoid"):
        # Every CAM learns: its output bias always gets a gradient (hidden ReLU units of a
        # narrow CAM may be inactive on a 2-image batch, so fc1 can legitimately stay put).
        cams = [n for n, m in model.named_modules() if isinstance(m, ChannelAttention)]
        assert cams
        assert {f"{n}.fc2.bias" for n in cams} <= changed


# --- encoder weights ---------------------------------------------------------------------------


def _no_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_download)
    return tmp_path / "hub"


def test_build_model_without_weights_logs_random_init_once(caplog, monkeypatch):
    monkeypatch.setattr(models, "_logged_random_init", set())
    with caplog.at_level(logging.INFO, logger="drac_algo.networks.models"):
        build_model(tiny_spec("unet"))
        build_model(tiny_spec("unet"))
    messages = [r.getMessage() for r in caplog.records if "random initialisation" in r.getMessage()]
    assert messages == ["encoder resnet18: random initialisation (no encoder weights asked for)"]


def test_imagenet_without_cache_refuses_instead_of_downloading(empty_hf_cache):
    assert resolve_encoder_weights("resnet18", None) is None
    with pytest.raises(DracInputError, match="not in the local Hugging Face cache"):
        resolve_encoder_weights("resnet18", "imagenet")
    with pytest.raises(DracInputError, match="not in the local Hugging Face cache"):
        build_model(tiny_spec("unet"), "imagenet")


def test_imagenet_from_local_cache_is_loaded_with_summed_first_conv(empty_hf_cache):
    torch.manual_seed(1)
    rgb_encoder = smp.encoders.get_encoder("resnet18", in_channels=3, weights=None)
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    snapshot = (
        empty_hf_cache
        / f"models--{settings['repo_id'].replace('/', '--')}"
        / "snapshots"
        / settings["revision"]
    )
    snapshot.mkdir(parents=True)
    save_file(rgb_encoder.state_dict(), str(snapshot / "model.safetensors"))

    assert resolve_encoder_weights("resnet18", "imagenet") == snapshot / "model.safetensors"
    model = build_model(tiny_spec("unet"), "imagenet")
    rgb_state = rgb_encoder.state_dict()
    torch.testing.assert_close(
        model.encoder.conv1.weight, rgb_state["conv1.weight"].sum(1, keepdim=True)
    )
    torch.testing.assert_close(
        model.encoder.layer1[0].conv1.weight, rgb_state["layer1.0.conv1.weight"]
    )


def test_local_weights_file_with_model_prefix(tmp_path):
    torch.manual_seed(2)
    source = build_network(tiny_spec("unet"))
    path = tmp_path / "whole_model.pt"
    torch.save(source.state_dict(), path)
    model = build_model(tiny_spec("unetplusplus", "cam"), path)
    torch.testing.assert_close(model.encoder.state_dict(), source.encoder.state_dict())


def test_bad_weights_files(tmp_path):
    with pytest.raises(DracInputError, match="does not exist"):
        build_model(tiny_spec("unet"), tmp_path / "missing.pt")
    wrong = tmp_path / "resnet34.pt"
    torch.save(smp.encoders.get_encoder("resnet34", weights=None).state_dict(), wrong)
    with pytest.raises(DracInputError, match="do not fit this encoder"):
        build_model(tiny_spec("unet"), wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DracInputError, match="cannot read encoder weights"):
        build_model(tiny_spec("unet"), garbage)


@pytest.mark.parametrize(
    "data",
    [
        {"arch": ["unet"]},
        {"arch": "unet", "decoder_channels": 16},
        {"arch": "unet", "decoder_channels": [32, 16, 16, 8, "8"]},
        {"arch": "unet", "encoder_depth": "5"},
    ],
)
def test_spec_from_dict_rejects_wrong_types(data):
    with pytest.raises(DracInputError):
        ModelSpec.from_dict(data)


@pytest.mark.parametrize(
    "key",
    [
        "encoder.conv1.weight",
        "module.encoder.conv1.weight",  # DataParallel / DDP
        "_orig_mod.encoder.conv1.weight",  # torch.compile
        "module._orig_mod.encoder.conv1.weight",  # DDP of a compiled model
        "_orig_mod.module.encoder.conv1.weight",  # a compiled DDP model
    ],
)
def test_wrapper_prefixes_are_removed_in_any_nesting(key):
    assert unwrapped_key(key) == "encoder.conv1.weight"
