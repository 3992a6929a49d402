"""The networks: model specs and builders over segmentation-models-pytorch (:mod:`.models`)
and the method's channel attention module (:mod:`.attention`).

May import: :mod:`drac_algo.data` (normalisation), :mod:`drac_algo.common`.
"""
