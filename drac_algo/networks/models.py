"""The segmentation networks: one binary model per lesion class, built from a
:class:`drac_algo.networks.spec.ModelSpec`.

Every model maps a ``(N, 1, H, W)`` float32 image, normalised as ``(uint8 / 255 - mean) / std``
(see :class:`drac_algo.networks.spec.Normalization`), to ``(N, 1, H, W)`` float logits (apply a
sigmoid for probabilities). ``H`` and ``W`` must be multiples of ``2 ** encoder_depth`` (32 at
the default depth 5; :func:`drac_algo.networks.spec.input_multiple`).

Architectures come from segmentation-models-pytorch (smp) 0.6.0 through one registry,
:data:`ARCHITECTURES`. Decoder attention is one of
:data:`drac_algo.networks.spec.ATTENTIONS`:

- ``None``: plain smp decoder.
- ``"cam"``: the method's channel attention module
  (:class:`drac_algo.networks.attention.ChannelAttention`) in both attention slots of every Unet /
  Unet++
  decoder block (see :func:`drac_algo.networks.attention.insert_channel_attention`).
- ``"cam-2sigmoid"``: the same module with its gates scaled to (0, 2) (``2 * sigmoid``, as in
  the squeeze-and-excitation blocks of Brock et al.'s normaliser-free ResNets), so that every gate
  starts near 1 instead of 0.5: the decoder passes its signal through unchanged at
  initialisation. Same parameters and state dict as ``"cam"``.
- ``"scse"``: smp's own concurrent spatial and channel squeeze-and-excitation, a different
  module (it adds a spatial gate), kept as an ablation.

Encoder weights are never downloaded behind the user's back: :func:`build_model` starts from
random initialisation unless asked for ``"imagenet"`` (found in the local Hugging Face cache, or
downloaded only with ``allow_download=True``) or given a local weights file.
:func:`load_initial_weights` starts a whole network from a checkpoint instead (a recipe's
``init_from``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import huggingface_hub
import segmentation_models_pytorch as smp
import timm
import torch
from safetensors.torch import load_file
from torch import nn

from drac_algo.common.errors import DracInputError
from drac_algo.networks.attention import CAM_GATE_SCALES, insert_channel_attention
from drac_algo.networks.spec import ARCHITECTURE_NAMES, ModelSpec

log = logging.getLogger(__name__)

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "unet": smp.Unet,
    "unetplusplus": smp.UnetPlusPlus,
    "deeplabv3plus": smp.DeepLabV3Plus,
}
assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES, "networks.spec lists the same architectures"


def encoder_names() -> list[str]:
    """The smp encoder names accepted in a :class:`ModelSpec` (timm ``tu-<model>`` names also
    are, when timm knows the model)."""
    return list(smp.encoders.get_encoder_names())


def check_encoder(name: str) -> None:
    """Raise :class:`DracInputError` unless smp (or timm, for ``tu-<model>``) knows the encoder
    ``name``: the one part of a :class:`ModelSpec` its own validation leaves out."""
    if name in smp.encoders.get_encoder_names():
        return
    if name.startswith("tu-") and timm.is_model(name[3:]):
        return
    raise DracInputError(
        f"unknown encoder {name!r}; valid: {', '.join(encoder_names())} (or 'tu-<timm model name>')"
    )


def build_network(spec: ModelSpec) -> nn.Module:
    """The network for ``spec`` with random weights (no download, no file read).

    Returns a module mapping ``(N, 1, H, W)`` float to ``(N, 1, H, W)`` logits; ``H, W``
    multiples of :func:`input_multiple`. Use :func:`build_model` to start training (it loads
    encoder weights when asked); bundles use this and then load their own state dict.
    """
    check_encoder(spec.encoder)
    kwargs: dict[str, Any] = {
        "encoder_name": spec.encoder,
        "encoder_depth": spec.encoder_depth,
        "encoder_weights": None,
        "in_channels": 1,
        "classes": 1,
        "activation": None,
    }
    if spec.arch == "deeplabv3plus":
        kwargs["decoder_channels"] = spec.resolved_decoder_channels()[0]
    else:
        kwargs["decoder_channels"] = spec.resolved_decoder_channels()
        # CAM is not an smp attention type: build without attention, then fill the slots.
        kwargs["decoder_attention_type"] = "scse" if spec.attention == "scse" else None
    try:
        model = ARCHITECTURES[spec.arch](**kwargs)
    except (ValueError, KeyError) as exc:
        raise DracInputError(f"smp cannot build {spec.to_dict()}: {exc}") from exc
    if spec.attention in CAM_GATE_SCALES:
        insert_channel_attention(model, spec.arch, gate_scale=CAM_GATE_SCALES[spec.attention])
    return model


def resolve_encoder_weights(
    encoder: str, requested: str | Path | None, *, allow_download: bool = False
) -> Path | None:
    """Where the encoder's starting weights come from: a local file, or ``None`` (random).

    ``requested``: ``None`` (random initialisation), ``"imagenet"`` (smp's ImageNet weights,
    which smp 0.6.0 keeps on the Hugging Face hub: taken from the local Hugging Face cache, or
    downloaded only when ``allow_download`` is true), or the path of a local weights file
    (``.safetensors``, or ``.pt``/``.pth`` state dict). Raises :class:`DracInputError` when the
    weights cannot be had without a download that was not allowed.
    """
    if requested is None:
        return None
    if str(requested) != "imagenet":
        path = Path(requested).expanduser()
        if not path.is_file():
            raise DracInputError(
                f"encoder weights file {path} does not exist (encoder_weights takes none, "
                "'imagenet' or a local weights file)"
            )
        return path
    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    if "imagenet" not in settings:
        raise DracInputError(
            f"smp knows no ImageNet weights for encoder {encoder!r}; pass a local weights file"
        )
    repo_id, revision = settings["imagenet"]["repo_id"], settings["imagenet"]["revision"]
    cached = huggingface_hub.try_to_load_from_cache(repo_id, "model.safetensors", revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if not allow_download:
        raise DracInputError(
            f"ImageNet weights for encoder {encoder!r} ({repo_id}@{revision[:8]}) are not in the "
            f"local Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) and downloading "
            "was not allowed; pass a local weights file, allow the download on a machine with "
            "network, or leave encoder_weights unset to start from random initialisation"
        )
    try:
        return Path(
            huggingface_hub.hf_hub_download(repo_id, "model.safetensors", revision=revision)
        )
    except Exception as exc:  # network, proxy and hub errors all mean the same here
        raise DracInputError(
            f"could not download ImageNet weights for {encoder!r} from {repo_id}: {exc}"
        ) from exc


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DracInputError(f"cannot read encoder weights {path}: {exc}") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise DracInputError(f"encoder weights {path} hold no state dict")
    return dict(state)


def load_encoder_weights(model: nn.Module, path: Path) -> None:
    """Load an encoder state dict file into ``model.encoder`` (strict).

    Accepts a bare encoder state dict (smp hub / torchvision layout; classifier keys are
    dropped by smp's encoders) or a whole smp model's (``encoder.``-prefixed keys are taken).
    A 3-channel first convolution is summed over its input channels to fit the one-channel
    input, which is what smp does for ``in_channels=1``.
    """
    state = _read_state_dict(path)
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    own = model.encoder.state_dict()
    for key, tensor in state.items():
        target = own.get(key)
        if (
            target is not None
            and tensor.ndim == 4
            and target.ndim == 4
            and target.shape[1] == 1
            and tensor.shape[1] == 3
            and tensor.shape[0] == target.shape[0]
        ):
            state[key] = tensor.sum(1, keepdim=True)
    try:
        model.encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise DracInputError(f"encoder weights {path} do not fit this encoder: {exc}") from exc


# Prefixes that torch.compile and DataParallel/DDP put in front of every state dict key, nested
# in either order (DDP of a compiled model: "module._orig_mod.").
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def unwrapped_key(key: str) -> str:
    """A state dict key without the wrapper prefixes in front of it."""
    while prefix := next((p for p in WRAPPER_PREFIXES if key.startswith(p)), None):
        key = key.removeprefix(prefix)
    return key


def load_initial_weights(model: nn.Module, path: str | Path) -> None:
    """Start ``model`` from the weights in ``path``: a member checkpoint (``best.pt`` /
    ``last.pt``, weights under ``"model"``) or a bare state dict such as a bundle member file.
    The architecture must match exactly (strict load); a mismatch names the file."""
    try:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or non-torch file: every reader error means the same
        raise DracInputError(f"init_from: cannot read checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DracInputError(f"init_from: {path} holds no state dict")
    state = {unwrapped_key(k): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DracInputError(
            f"init_from: {path} does not fit this task's model ({exc.args[0].splitlines()[0]})"
        ) from exc


_logged_random_init: set[str] = set()


def build_model(
    spec: ModelSpec,
    encoder_weights: str | Path | None = None,
    *,
    allow_download: bool = False,
) -> nn.Module:
    """The network for ``spec``, its encoder initialised as asked (see
    :func:`resolve_encoder_weights`); ``(N, 1, H, W)`` float -> ``(N, 1, H, W)`` logits.

    With ``encoder_weights=None`` the whole network is randomly initialised, said once per
    process in the log.
    """
    path = resolve_encoder_weights(spec.encoder, encoder_weights, allow_download=allow_download)
    model = build_network(spec)
    if path is None:
        if spec.encoder not in _logged_random_init:
            _logged_random_init.add(spec.encoder)
            log.info(
                "encoder %s: random initialisation (no encoder weights asked for)", spec.encoder
            )
    else:
        load_encoder_weights(model, path)
        log.info("encoder %s: weights loaded from %s", spec.encoder, path)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
