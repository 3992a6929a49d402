"""The three DRAC2022 Task 1 lesion classes and the names they go by in every format."""

from dataclasses import dataclass

from drac_algo.common.errors import DracInputError


@dataclass(frozen=True)
class LesionClass:
    index: int  # challenge label: submission file "<index>.nii.gz"
    key: str  # short name used on the command line and in file names
    name: str  # the organisers' name
    folder: str  # ground-truth folder name in the DRAC release
    slug: str  # default Grand Challenge output socket slug


LESION_CLASSES: tuple[LesionClass, ...] = (
    LesionClass(
        1,
        "irma",
        "Intraretinal Microvascular Abnormalities",
        "1. Intraretinal Microvascular Abnormalities",
        "intraretinal-microvascular-abnormalities-segmentation",
    ),
    LesionClass(
        2,
        "na",
        "Nonperfusion Areas",
        "2. Nonperfusion Areas",
        "nonperfusion-areas-segmentation",
    ),
    LesionClass(
        3,
        "nv",
        "Neovascularization",
        "3. Neovascularization",
        "neovascularization-segmentation",
    ),
)

BY_INDEX: dict[int, LesionClass] = {c.index: c for c in LESION_CLASSES}
BY_KEY: dict[str, LesionClass] = {c.key: c for c in LESION_CLASSES}


def lesion_class(key_or_index: str | int) -> LesionClass:
    """Look a class up by key ("irma"), index (1) or index as text ("1")."""
    if isinstance(key_or_index, int) or str(key_or_index).isdigit():
        found = BY_INDEX.get(int(key_or_index))
    else:
        found = BY_KEY.get(str(key_or_index).lower())
    if found is None:
        valid = ", ".join(f"{c.key} ({c.index})" for c in LESION_CLASSES)
        raise DracInputError(f"unknown lesion class {key_or_index!r}; valid: {valid}")
    return found
