"""The model bundle, the contract between training and inference: the manifest's types and
validation (:mod:`.manifest`), reading with checksums, writing and rebuilding a member
(:mod:`.store`), the ONNX export (:mod:`.onnx_export`, not in the container) and the
``drac-bundle check`` command (:mod:`.cli`; ``python -m drac_algo.bundle check DIR``).

May import: :mod:`drac_algo.networks`, :mod:`drac_algo.data`, :mod:`drac_algo.common`. This file
imports nothing, so that ``python -m drac_algo.bundle --help`` needs no torch.
"""
