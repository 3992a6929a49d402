"""``python -m drac_algo.bundle check DIR``: see :mod:`drac_algo.bundle.cli`."""

from drac_algo.bundle.cli import main

if __name__ == "__main__":
    main()
