import json
import logging
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY

from drac_algo.common.errors import DracInputError
from drac_algo.common.hardware import cpu_features, native_bf16, onednn_bf16
from drac_algo.engine.core import predict_probability
from drac_algo.engine.devices import resolve_device
from drac_algo.engine.ensemble import ClassEnsemble, Member
from drac_algo.engine.precision import resolve_precision
from drac_algo.engine.predictor import Predictor

MEAN, STD = 0.5, 0.25


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def normalised(image, mean=MEAN, std=STD):
    return (image.astype(np.float32) / 255.0 - mean) / std


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def identity(x):
    return x


# A fixed asymmetric kernel plus a horizontal ramp: equivariant under no transform but the
# identity, and strictly per-sample, so batching must not change its output.
ASYMMETRIC = torch.tensor([[0.0, 1.0, 0.5], [-1.0, 0.3, 0.0], [0.2, 0.0, -0.7]])[None, None]


def asymmetric(x):
    ramp = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype)
    return F.conv2d(x, ASYMMETRIC.to(x.dtype), padding=1) + ramp


# Symmetric under every element of D4 and applied with zero padding on the whole square, so it
# commutes with every transform.
SYMMETRIC = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])[None, None] / 16


def equivariant(x):
    return 3.0 * F.conv2d(x, SYMMETRIC.to(x.dtype), padding=1) - 0.2


def apply_numpy(f, a):
    """f on one (S, S) numpy image through a (1, 1, S, S) tensor."""
    return f(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None])[0, 0].numpy()


# The D4 group written with numpy, independently of drac_algo.engine.tta: (forward, inverse).
NUMPY_D4 = {
    "identity": (lambda a: a, lambda a: a),
    "hflip": (np.fliplr, np.fliplr),
    "vflip": (np.flipud, np.flipud),
    "rot90": (lambda a: np.rot90(a, 1), lambda a: np.rot90(a, -1)),
    "rot180": (lambda a: np.rot90(a, 2), lambda a: np.rot90(a, 2)),
    "rot270": (lambda a: np.rot90(a, -1), lambda a: np.rot90(a, 1)),
    "transpose": (lambda a: a.T, lambda a: a.T),
    "antitranspose": (lambda a: np.rot90(a, 2).T, lambda a: np.rot90(a, 2).T),
}


def explicit_tta(f, x, names):
    return np.mean(
        [sigmoid(NUMPY_D4[n][1](apply_numpy(f, NUMPY_D4[n][0](x)))) for n in names], axis=0
    )


# ------------------------------------------------------------------------------------------
# TTA algebra with fake networks


@pytest.mark.parametrize("tta", ["none", "flips", "d4"])
def test_identity_network_gives_the_sigmoid_of_the_input(tta):
    image = random_image(32, 32)
    members = [Member(identity, 32, MEAN, STD)]
    out = predict_probability(members, image, tta=tta)
    assert out.shape == (32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, sigmoid(normalised(image)), atol=1e-6)


def test_identity_network_on_a_padded_non_square_image():
    image = random_image(37, 53)
    out = predict_probability([Member(identity, 53, MEAN, STD)], image, tta="d4")
    assert out.shape == (37, 53)
    np.testing.assert_allclose(out, sigmoid(normalised(image)), atol=1e-6)


def test_equivariant_network_tta_equals_single_view():
    image = random_image(32, 32, seed=1)
    members = [Member(equivariant, 32, MEAN, STD)]
    single = predict_probability(members, image, tta="none")
    for tta in ("flips", "d4"):
        np.testing.assert_allclose(predict_probability(members, image, tta=tta), single, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 8])
@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_non_equivariant_network_matches_the_explicit_mean(tta, chunk):
    image = random_image(32, 32, seed=2)
    members = [Member(asymmetric, 32, MEAN, STD)]
    out = predict_probability(members, image, tta=tta, max_views_per_batch=chunk, precision="fp32")
    names = {"flips": ["identity", "hflip", "vflip", "rot180"], "d4": list(NUMPY_D4)}[tta]
    expected = explicit_tta(asymmetric, normalised(image), names)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    single = predict_probability(members, image, tta="none", precision="fp32")
    assert np.abs(out - single).max() > 0.01  # the views really differ


@pytest.mark.parametrize("name", list(NUMPY_D4))
def test_each_inverse_is_right_for_a_non_equivariant_network(name):
    image = random_image(32, 32, seed=3)
    out = predict_probability(
        [Member(asymmetric, 32, MEAN, STD)], image, tta=[name], precision="fp32"
    )
    np.testing.assert_allclose(out, explicit_tta(asymmetric, normalised(image), [name]), atol=1e-5)


def test_member_tta_validity_restricts_the_views(caplog):
    image = random_image(32, 32, seed=4)
    restricted = Member(asymmetric, 32, MEAN, STD, tta=("hflip",), name="m0")
    with caplog.at_level(logging.INFO, logger="drac_algo.engine.tta"):
        out = predict_probability([restricted], image, tta="d4", precision="fp32")
    expected = explicit_tta(asymmetric, normalised(image), ["identity", "hflip"])
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert "m0" in caplog.text and "rot90" in caplog.text


# ------------------------------------------------------------------------------------------
# Sizes and ensembles


@pytest.mark.parametrize(("shape", "input_size"), [((37, 53), 64), ((53, 37), 40), ((40, 40), 32)])
def test_output_matches_the_input_size(shape, input_size):
    image = random_image(*shape)
    out = predict_probability([Member(asymmetric, input_size, MEAN, STD)], image, tta="d4")
    assert out.shape == shape and out.dtype == np.float32
    # Geometry kept, not just the shape: the map follows the image (no transposed or shifted
    # copy), so it correlates with the independent full-resolution probability of the image.
    reference = sigmoid(normalised(image))
    assert np.corrcoef(out.ravel(), reference.ravel())[0, 1] > 0.5


def test_resizing_keeps_a_constant_image_constant():
    image = np.full((37, 53), 200, dtype=np.uint8)
    out = predict_probability([Member(identity, 64, MEAN, STD)], image, tta="d4")
    np.testing.assert_allclose(out, sigmoid(normalised(image)), atol=1e-6)


def test_members_with_different_sizes_and_normalisations_are_averaged():
    image = random_image(37, 53, seed=5)
    a = Member(asymmetric, 64, 0.5, 0.25, name="a")
    b = Member(equivariant, 32, 0.3, 0.5, name="b")
    both = predict_probability([a, b], image, tta="flips")
    separate = [predict_probability([m], image, tta="flips") for m in (a, b)]
    np.testing.assert_allclose(both, (separate[0] + separate[1]) / 2, atol=1e-6)
    assert np.abs(separate[0] - separate[1]).max() > 0.01


def test_bad_inputs_are_reported():
    members = [Member(identity, 32)]
    with pytest.raises(DracInputError, match="uint8"):
        predict_probability(members, np.zeros((32, 32), dtype=np.float32))
    with pytest.raises(DracInputError, match="2D"):
        predict_probability(members, np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(DracInputError, match="same shape"):
        predict_probability([Member(lambda x: x[:, :, :-1], 32)], random_image(32, 32))
    with pytest.raises(DracInputError, match="std"):
        Member(identity, 32, std=0.0)
    with pytest.raises(DracInputError, match="no members"):
        ClassEnsemble(1, ())


# ------------------------------------------------------------------------------------------
# Precision and device


def test_precision_option():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is (torch.bfloat16 if native_bf16(cpu) else None)
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert resolve_precision("fp16", cpu) is torch.float16
    with pytest.raises(DracInputError, match="valid: auto, fp32, bf16, fp16"):
        resolve_precision("half", cpu)
    with pytest.raises(DracInputError, match="valid"):
        Predictor([ClassEnsemble(1, (Member(identity, 32),))], device="cpu", precision="fp64")


@pytest.mark.parametrize(
    ("device", "native", "expected"),
    [
        ("cpu", True, torch.bfloat16),
        ("cpu", False, None),  # emulated bf16 is slower than fp32 on the CPU
        ("cuda", True, torch.bfloat16),
        ("cuda", False, torch.float16),  # the T4: bf16 only emulated, fp16 has tensor cores
    ],
)
def test_auto_precision_follows_native_bf16(monkeypatch, device, native, expected):
    monkeypatch.setattr("drac_algo.engine.precision.native_bf16", lambda _device: native)
    assert resolve_precision("auto", torch.device(device)) is expected


def test_native_bf16_on_this_machine_follows_its_cpu_flags():
    flags = set(cpu_features())
    expected = onednn_bf16() and (not flags or bool({"avx512_bf16", "amx_bf16"} & flags))
    assert native_bf16(torch.device("cpu")) is expected
    assert native_bf16(torch.device("meta")) is False
    if not torch.cuda.is_available():
        assert native_bf16(torch.device("cuda")) is False


def test_cuda_request_without_cuda_is_an_input_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DracInputError, match="CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    image = random_image(32, 32, seed=6)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    members = [Member(conv, 32, MEAN, STD)]
    fp32 = predict_probability(members, image, tta="flips", precision="fp32")
    bf16 = predict_probability(members, image, tta="flips", precision="bf16")
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, atol=2e-2)
    assert not np.array_equal(bf16, fp32)  # autocast really ran in bf16


# ------------------------------------------------------------------------------------------
# Overflow under autocast


def overflows_under_autocast(x):
    """``asymmetric``, but NaN wherever autocast is on (an fp16 activation that overflowed)."""
    out = asymmetric(x)
    return out * float("nan") if torch.is_autocast_enabled(x.device.type) else out


def test_overflow_under_autocast_reruns_the_member_in_fp32(caplog):
    image = random_image(32, 32, seed=9)
    member = Member(overflows_under_autocast, 32, MEAN, STD, name="m")
    reference = predict_probability([member], image, tta="flips", precision="fp32")
    predictor = Predictor(
        [ClassEnsemble(1, (member,))], device="cpu", tta="flips", precision="fp16"
    )
    with caplog.at_level(logging.WARNING, logger="drac_algo.engine.core"):
        result = predictor.predict(image)
    np.testing.assert_allclose(result.probabilities[1], reference, atol=1e-6)
    assert "m: non-finite probabilities under fp16 autocast" in caplog.text
    assert len(result.warnings) == 1 and predictor.stats()["fp32_reruns"] == 1


def test_non_finite_output_in_fp32_is_an_error():
    member = Member(lambda x: x * float("nan"), 32, MEAN, STD, name="broken")
    with pytest.raises(DracInputError, match="broken: the network gives non-finite"):
        predict_probability([member], random_image(32, 32), tta="none", precision="fp32")


# ------------------------------------------------------------------------------------------
# Out of memory


class LimitedNetwork:
    """Raises CUDA-style out-of-memory for batches above ``max_batch`` or, with ``cpu_only``,
    for any tensor not on the CPU; otherwise ``asymmetric``. Records every batch size."""

    def __init__(self, max_batch=None, cpu_only=False):
        self.max_batch, self.cpu_only, self.calls = max_batch, cpu_only, []

    def __call__(self, x):
        self.calls.append((x.device.type, x.shape[0]))
        if self.cpu_only and x.device.type != "cpu":
            raise torch.OutOfMemoryError("fake: device full")
        if self.max_batch is not None and x.shape[0] > self.max_batch:
            raise torch.OutOfMemoryError("fake: batch too large")
        return asymmetric(x)


def one_class(network, **kwargs):
    return [ClassEnsemble(1, (Member(network, 32, MEAN, STD, name="m"),), **kwargs)]


def test_oom_halves_the_views_per_batch_and_remembers_it(caplog):
    image = random_image(32, 32, seed=7)
    reference = predict_probability([Member(asymmetric, 32, MEAN, STD)], image, tta="d4")
    network = LimitedNetwork(max_batch=2)
    predictor = Predictor(one_class(network), device="cpu", tta="d4", max_views_per_batch=8)
    with caplog.at_level(logging.WARNING, logger="drac_algo.engine.core"):
        first = predictor.predict(image)
    np.testing.assert_allclose(first.probabilities[1], reference, atol=1e-6)
    assert len(first.warnings) == 2
    assert "8 views per batch; retrying with 4" in caplog.text
    assert "4 views per batch; retrying with 2" in caplog.text
    network.calls.clear()
    second = predictor.predict(image)
    assert second.warnings == []
    assert network.calls == [("cpu", 2)] * 4
    stats = predictor.stats()
    assert (stats["oom_retries"], stats["cpu_fallbacks"], stats["views_per_batch_now"]) == (2, 0, 2)


def test_oom_with_one_view_falls_back_to_the_cpu(caplog):
    # The meta device stands in for a full accelerator: every forward there runs out of memory.
    image = random_image(32, 32, seed=8)
    reference = predict_probability([Member(asymmetric, 32, MEAN, STD)], image, tta="flips")
    network = LimitedNetwork(cpu_only=True)
    predictor = Predictor(one_class(network), device="meta", tta="flips", max_views_per_batch=4)
    with caplog.at_level(logging.WARNING, logger="drac_algo.engine.core"):
        result = predictor.predict(image)
    np.testing.assert_allclose(result.probabilities[1], reference, atol=1e-6)
    assert [c for c in network.calls if c[0] == "meta"] == [("meta", 4), ("meta", 2), ("meta", 1)]
    assert [c for c in network.calls if c[0] == "cpu"] == [("cpu", 1)] * 4
    assert "running this image on the CPU" in caplog.text
    assert predictor.stats()["cpu_fallbacks"] == 1
    assert result.masks[1].shape == (32, 32)


def test_oom_on_the_cpu_with_one_view_is_raised():
    with pytest.raises(torch.OutOfMemoryError, match="one view"):
        predict_probability([Member(LimitedNetwork(max_batch=0), 32)], random_image(32, 32))


# ------------------------------------------------------------------------------------------
# Predictor


def blob_image():
    """0 everywhere; a 4x4 bright square with a dark centre pixel, and one bright pixel."""
    image = np.zeros((32, 32), dtype=np.uint8)
    image[4:8, 4:8] = 255
    image[5, 5] = 0
    image[20, 20] = 255
    return image


def test_predictor_thresholds_and_post_processes_each_class():
    image = blob_image()
    classes = [
        ClassEnsemble(1, (Member(identity, 32),), threshold=0.5, key="irma"),
        ClassEnsemble(2, (Member(identity, 32),), threshold=0.5, min_component_px=2, key="na"),
        ClassEnsemble(3, (Member(identity, 32),), 0.5, min_component_px=2, fill_holes=True),
        ClassEnsemble(4, (Member(identity, 32),), threshold=0.95),
    ]
    predictor = Predictor(classes, device="cpu", tta="flips")
    assert predictor.classes == (1, 2, 3, 4)
    result = predictor.predict(image)
    bright = (image == 255).astype(np.uint8)
    assert result.masks[1].dtype == np.uint8
    assert np.array_equal(result.masks[1], bright)
    without_dot = bright.copy()
    without_dot[20, 20] = 0
    assert np.array_equal(result.masks[2], without_dot)
    filled = without_dot.copy()
    filled[5, 5] = 1
    assert np.array_equal(result.masks[3], filled)
    assert result.masks[4].sum() == 0  # sigmoid(2) = 0.88 < 0.95
    np.testing.assert_allclose(result.probabilities[1], sigmoid(normalised(image)), atol=1e-6)


def test_predictor_settings_and_stats_are_json():
    classes = [ClassEnsemble(2, (Member(identity, 32, tta=("hflip",), name="m"),), key="na")]
    predictor = Predictor(classes, device="cpu", tta="d4", max_views_per_batch=4, source="/b")
    predictor.predict(random_image(32, 32))
    settings = json.loads(json.dumps(predictor.settings()))
    cpu_autocast = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    assert settings["device"] == "cpu" and settings["autocast"] == cpu_autocast
    assert settings["bundle"] == "/b" and settings["tta"] == "d4"
    assert settings["classes"]["2"]["members"][0]["views"] == ["identity", "hflip"]
    stats = json.loads(json.dumps(predictor.stats()))
    assert stats["images"] == 1 and stats["seconds_total"] > 0


def test_predictor_puts_modules_in_eval_mode():
    module = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Conv2d(1, 1, 1))
    assert module.training
    predictor = Predictor([ClassEnsemble(1, (Member(module, 32),))], device="cpu", tta="none")
    assert not module.training
    image = random_image(32, 32)
    a, b = predictor.predict(image), predictor.predict(image)
    assert np.array_equal(a.probabilities[1], b.probabilities[1])


def test_predict_many_keeps_order_and_prefetches():
    next_loaded = threading.Event()
    overlapped = []

    def load(i):
        if i == 1:
            next_loaded.set()
        return SimpleNamespace(pixels=np.full((32, 32), 10 * i, dtype=np.uint8))

    def network(x):
        if not overlapped:
            # While image 0 is in the network, image 1 is being decoded in the background.
            overlapped.append(next_loaded.wait(timeout=10))
        return x

    predictor = Predictor([ClassEnsemble(1, (Member(network, 32),))], device="cpu", tta="none")
    results = list(predictor.predict_many(range(5), load=load))
    assert overlapped == [True]
    assert [item for item, _, _ in results] == [0, 1, 2, 3, 4]
    for item, loaded, prediction in results:
        assert loaded.pixels[0, 0] == 10 * item
        expected = sigmoid(normalised(np.full((32, 32), 10 * item, dtype=np.uint8)))
        np.testing.assert_allclose(prediction.probabilities[1], expected, atol=1e-6)


def test_predict_many_raises_a_load_error_in_turn():
    def load(i):
        if i == 2:
            raise DracInputError("item 2 is broken")
        return np.zeros((32, 32), dtype=np.uint8)

    predictor = Predictor([ClassEnsemble(1, (Member(identity, 32),))], device="cpu", tta="none")
    seen = []
    with pytest.raises(DracInputError, match="item 2"):
        for item, _, _ in predictor.predict_many([0, 1, 2, 3], load=load):
            seen.append(item)
    assert seen == [0, 1]


# ------------------------------------------------------------------------------------------
# Real (tiny) networks and the bundle

TINY_ENCODER = "tu-mobilenetv3_small_050"


def tiny_spec(arch="unet"):
    from drac_algo.networks.spec import ModelSpec

    channels = (16,) if arch == "deeplabv3plus" else (16, 16, 8, 8, 4)
    return ModelSpec(arch, TINY_ENCODER, encoder_depth=5, decoder_channels=channels)


@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "deeplabv3plus"])
def test_every_architecture_runs_on_sizes_that_are_not_multiples_of_32(arch):
    from drac_algo.networks.models import build_network

    torch.manual_seed(0)
    network = build_network(tiny_spec(arch)).eval()
    image = random_image(37, 53)
    out = predict_probability([Member(network, 40)], image, tta="flips", max_views_per_batch=2)
    assert out.shape == (37, 53) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.std() > 0  # a real map, not NaN from bad padding


def test_predictor_from_bundle(make_bundle):
    from drac_algo.bundle.manifest import Bundle, ClassEntry, MemberSpec
    from drac_algo.bundle.store import build_member, load_bundle
    from drac_algo.engine.postprocess import postprocess_mask
    from drac_algo.networks.spec import Normalization

    specs = {
        "irma_a.pt": MemberSpec("irma_a.pt", TINY, 32, tta=tuple(NUMPY_D4)),
        "irma_b.pt": MemberSpec(
            "irma_b.pt", TINY, 64, Normalization(0.3, 0.2), tta=("identity", "hflip")
        ),
        "na.pt": MemberSpec("na.pt", TINY, 32, tta=("identity", "vflip")),
    }
    bundle = Bundle(
        {
            1: ClassEntry(1, "irma", 0.5, 0, False, [specs["irma_a.pt"], specs["irma_b.pt"]]),
            2: ClassEntry(2, "na", 0.4, 5, True, [specs["na.pt"]]),
        }
    )
    model = make_bundle(bundle=bundle, heads={})
    saved = load_bundle(model)

    # float32 here and in the reference below: "auto" is bf16 on a CPU with AVX512-BF16 or AMX,
    # whose rounding differs with the views per batch (~2e-5 on these near-zero logits on an AMD
    # EPYC with avx512_bf16), which is not what this test checks.
    predictor = Predictor.from_bundle(model, device="cpu", tta="d4", precision="fp32")
    assert predictor.classes == (1, 2)
    settings = predictor.settings()
    assert settings["bundle"] == str(model)
    views = [m["views"] for m in settings["classes"]["1"]["members"]]
    assert views == [list(NUMPY_D4), ["identity", "hflip"]]
    assert settings["classes"]["2"]["fill_holes"] is True

    image = random_image(37, 53, seed=10)
    result = predictor.predict(image)
    for index, entry in saved.classes.items():
        members = [
            Member(
                build_member(model, s),
                s.input_size,
                s.normalization.mean,
                s.normalization.std,
                tta=s.tta,
            )
            for s in entry.members
        ]
        expected = predict_probability(members, image, tta="d4", precision="fp32")
        np.testing.assert_allclose(result.probabilities[index], expected, atol=1e-5)
        mask = postprocess_mask(
            (expected >= entry.threshold).astype(np.uint8),
            entry.min_component_px,
            entry.fill_holes,
        )
        assert np.array_equal(result.masks[index], mask)
        assert result.masks[index].shape == (37, 53)

    only_na = Predictor.from_bundle(model, device="cpu", tta="none", classes=[2])
    assert only_na.classes == (2,)
    with pytest.raises(DracInputError, match=r"classes \[3\] requested"):
        Predictor.from_bundle(model, device="cpu", classes=[3])


def test_predict_many_reads_image_files_by_default(tmp_path):
    import cv2

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i:03d}.png")
        assert cv2.imwrite(str(paths[-1]), np.full((32, 40), 50 * i, dtype=np.uint8))
    predictor = Predictor([ClassEnsemble(1, (Member(identity, 40),))], device="cpu", tta="none")
    results = list(predictor.predict_many(paths))
    assert [item for item, _, _ in results] == paths
    for i, (_, loaded, prediction) in enumerate(results):
        assert loaded.pixels.shape == (32, 40)
        expected = sigmoid(normalised(np.full((32, 40), 50 * i, dtype=np.uint8)))
        np.testing.assert_allclose(prediction.probabilities[1], expected, atol=1e-6)
