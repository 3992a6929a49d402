"""``python -m drac_algo.onnx_export``: add ONNX files to a bundle.

The command is :func:`drac_algo.training.onnx_export.main`.
"""

from drac_algo.training.onnx_export import main

if __name__ == "__main__":
    main()
