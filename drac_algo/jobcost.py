"""``python -m drac_algo.jobcost``: what one Grand Challenge job costs per instance size.

The command is :func:`drac_algo.tools.jobcost.cli.main`.
"""

from drac_algo.tools.jobcost.cli import main

if __name__ == "__main__":
    main()
