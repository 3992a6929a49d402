"""``python -m drac_algo.tools.jobcost``: see :mod:`drac_algo.tools.jobcost.cli`."""

from drac_algo.tools.jobcost.cli import main

if __name__ == "__main__":
    main()
