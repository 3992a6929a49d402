"""``python -m drac_algo.quickstart``: phantom data, training, inference, scoring.

The command is :func:`drac_algo.tools.quickstart.main`.
"""

from drac_algo.tools.quickstart import main

if __name__ == "__main__":
    main()
