"""Per-epoch training history: a CSV and a training-curve PNG (train loss, validation loss,
validation Dice), the method's Fig. 7."""

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from drac_algo.common.fsutil import atomic_path, atomic_write_text

FIELDS = ("epoch", "lr", "train_loss", "val_loss", "val_dice", "seconds")


def write_history_csv(path: str | Path, history: Sequence[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def kept_point(history: Sequence[dict], kept_epoch: int) -> tuple[int, float] | None:
    """(epoch, validation Dice) of the epoch whose weights the member keeps, if it is in
    ``history`` with a Dice (the curves mark that one, not the highest Dice, which differs under
    ``checkpoint = "last"``)."""
    for row in history:
        if row["epoch"] == kept_epoch and not math.isnan(row["val_dice"]):
            return kept_epoch, row["val_dice"]
    return None


def plot_curves(
    path: str | Path, history: Sequence[dict], title: str, kept_epoch: int, kept_label: str
) -> None:
    """Two panels sharing the epoch axis: losses on the left, validation Dice on the right with
    the kept epoch marked and labelled ``kept_label``."""
    # Imported here: matplotlib takes about a second and only the plot needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train loss")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], marker="o", label="validation loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("Dice loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    dice = [r["val_dice"] for r in history]
    ax_dice.plot(epochs, dice, marker="o", color="tab:green", label="validation Dice")
    kept = kept_point(history, kept_epoch)
    if kept is not None:
        ax_dice.scatter([kept[0]], [kept[1]], color="tab:red", zorder=3, label=kept_label)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("challenge Dice (threshold 0.5)")
    ax_dice.set_ylim(0, 1)
    ax_dice.legend()
    ax_dice.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
