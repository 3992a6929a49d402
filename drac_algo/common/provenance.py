"""What produced a result: the versions of Python and the numerical packages, the CUDA build, and
the code's git commit, recorded in the bundle manifest, ``results.json`` and ``--version``.

    environment()        # {"python": "3.11.9", "torch": "2.9.1+cu128", "cuda": "12.8", ...}
    version_line()       # "drac-algo 0.1.0 (torch 2.9.1+cu128, CUDA 12.8)" for --version

Package versions come from the installed distributions' metadata, so nothing heavy is imported
for them; only the CUDA and cuDNN versions of the torch build need ``import torch`` (done once,
lazily, and only when torch is installed). A package that is not installed is ``None``: the
inference image has no albumentations, and that is a fact worth recording, not an error.
"""

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import drac_algo

# Distribution name -> key in the record. The distributions whose versions change the numbers.
PACKAGES = {
    "torch": "torch",
    "segmentation-models-pytorch": "smp",
    "timm": "timm",
    "albumentations": "albumentations",
    "SimpleITK": "simpleitk",
    "numpy": "numpy",
    "opencv-python-headless": "opencv",
    "onnxruntime": "onnxruntime",
}
REPO = Path(__file__).resolve().parents[2]


def package_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def torch_build() -> dict[str, str | None]:
    """torch's full version (with its local build tag, e.g. ``2.10.0+cu128``, which the package
    metadata drops) and the CUDA and cuDNN versions it was built with (``None`` for a CPU build
    or without torch). Imports torch."""
    try:
        import torch  # heavy: only here, when a record or --version asks for it
    except ImportError:
        return {"torch": None, "cuda": None, "cudnn": None}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None if cudnn is None else str(cudnn),
    }


def git_commit(repo: Path = REPO) -> str | None:
    """The commit of the checkout the code runs from, with ``-dirty`` when tracked files have
    changed; ``None`` outside a git checkout (an installed wheel, the container) or without git."""
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """One flat record: ``drac_algo``, ``python``, each of :data:`PACKAGES` (``None`` when not
    installed), ``cuda`` and ``cudnn`` of the torch build, and ``git_commit``."""
    record: dict[str, Any] = {
        "drac_algo": drac_algo.__version__,
        "python": platform.python_version(),
    }
    record.update({key: package_version(dist) for dist, key in PACKAGES.items()})
    record.update(torch_build())
    record["git_commit"] = git_commit()
    return record


def version_line(program: str = "drac-algo") -> str:
    """``--version``'s text: the project version, torch and the CUDA it was built for."""
    build = torch_build()
    torch_version = build["torch"] or "not installed"
    cuda = build["cuda"] or "none (CPU build)"
    return f"{program} {drac_algo.__version__} (torch {torch_version}, CUDA {cuda})"
