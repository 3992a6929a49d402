"""The ablation: per-class challenge Dice of the product's recipes, of each of their components
switched off or swapped, and of a plain baseline, over several training seeds.

    python -m drac_algo.ablate --workdir ablation                 # phantom data, 2 seeds
    python -m drac_algo.ablate --workdir ablation --data DRAC_ROOT # scored on its test split
    python -m drac_algo.ablate --workdir ablation --quick          # smoke test (CI)

Trained rows (:data:`drac_algo.tools.ablate.plan.TRAINED`) train every task of a variant with the
quickstart budget; rows that only change inference (:data:`drac_algo.tools.ablate.plan.DERIVED`)
reuse the ``best`` models. A task whose resolved config is the same in two variants is trained
once. Writes ``ablation.md``, ``ablation.json`` and ``ablation.png`` in the work folder.
"""
