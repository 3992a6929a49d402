"""The fixed sets of values that command options accept, as plain tuples in a module that imports
nothing, so that a command's ``--help`` lists them without importing torch (issue 12).

The library modules that act on these values take them from here (:mod:`drac_algo.engine.core`,
:mod:`drac_algo.engine.onnx_backend`, :mod:`drac_algo.training.config`); :data:`TTA_CHOICES` names
the keys of
:data:`drac_algo.engine.tta.TTA_SETS`, which a test keeps equal.
"""

# Numerical precision of inference (drac_algo.engine.core): auto picks per device.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# What runs the networks (drac_algo.engine.onnx_backend): auto = ONNX Runtime on a float32 CPU run.
BACKENDS = ("auto", "torch", "onnxruntime")
# Test-time augmentation sets, in process.py's --help order: 1, 4 and 8 views.
TTA_CHOICES = ("none", "flips", "d4")
# Training recipe families (drac_algo/training/recipes/<family>/<task>.toml).
RECIPE_FAMILIES = ("method", "best")
DEFAULT_RECIPE = "best"
# The weights a training member keeps (drac_algo.training.config TrainConfig.checkpoint).
CHECKPOINTS = ("best", "last")
