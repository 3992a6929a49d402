"""The model bundle, the contract between training and inference: the manifest's types and
stated ranges (:mod:`.manifest`), their checks (:mod:`.validation`), reading with checksums,
writing and rebuilding a member (:mod:`.store`), the strict load and ONNX agreement check
(:mod:`.verify`) and the ``drac-bundle check`` command (:mod:`.cli`;
``python -m drac_algo.bundle check DIR``). The ONNX export is training's
(:mod:`drac_algo.training.onnx_export`).

May import: :mod:`drac_algo.networks`, :mod:`drac_algo.data`, :mod:`drac_algo.common`. This file
imports nothing, so that ``python -m drac_algo.bundle --help`` needs no torch.
"""
