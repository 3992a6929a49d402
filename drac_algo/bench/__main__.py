"""``python -m drac_algo.bench``: see :mod:`drac_algo.bench.cli`."""

from drac_algo.bench.cli import main

if __name__ == "__main__":
    main()
