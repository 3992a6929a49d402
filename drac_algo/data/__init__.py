"""The DRAC2022 data and its formats: the release's folder layout (:mod:`.release`), image and
mask files (:mod:`.images`), the one image <-> network-input contract (:mod:`.preprocess`), the
challenge's submission stacks (:mod:`.submission`) and its exact metric (:mod:`.metrics`).

May import: :mod:`drac_algo.common`. Nothing here knows networks, training or a run.
"""
