"""``python -m drac_algo.bench``: see :mod:`drac_algo.tools.bench.cli`."""

from drac_algo.tools.bench.cli import main

if __name__ == "__main__":
    main()
