"""The inference engine: a bundle's members as class ensembles (:mod:`.ensemble`), the
functional core (TTA views, averaging, out-of-memory fallbacks; :mod:`.core`), the stateful
:class:`~.predictor.Predictor`, devices, precision, TTA, post-processing, the ONNX Runtime backend
and GPU diagnostics.

May import: :mod:`drac_algo.bundle`, :mod:`drac_algo.networks`, :mod:`drac_algo.data`,
:mod:`drac_algo.common`. Never training code or a run's file layout.
"""
