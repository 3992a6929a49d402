"""``python -m drac_algo.bench``: the inference benchmark.

The command is :func:`drac_algo.tools.bench.cli.main`.
"""

from drac_algo.tools.bench.cli import main

if __name__ == "__main__":
    main()
