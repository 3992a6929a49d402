"""Container entry point (``python -m process``, ``python process.py``): DRAC2022 Task 1 lesion
segmentation on UW-OCTA images. The command lives in :mod:`drac_algo.serve.cli` (installed as
``drac-process``); see its docstring and ``--help``."""

from drac_algo.serve.cli import main

if __name__ == "__main__":
    main()
