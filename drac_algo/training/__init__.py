"""Training: the typed recipes (:mod:`.config`, ``recipes/``), data and augmentation, losses,
optimizers, the member run (:mod:`.loop`), validation through the engine, checkpoints, the
experiment over folds and seeds (:mod:`.experiment`), DDP, and the bundle written from a run
(:mod:`.bundle_export`).

May import: :mod:`drac_algo.engine` (validation is inference), :mod:`drac_algo.bundle`,
:mod:`drac_algo.networks`, :mod:`drac_algo.data`, :mod:`drac_algo.common`. Not in the container.
"""

from pathlib import Path

# Where the recipe TOML files ship: <family>/<task>.toml and quickstart.toml. Here, not in
# config.py, so that the quickstart's --help can name it without importing torch.
RECIPES_DIR = Path(__file__).parent / "recipes"
