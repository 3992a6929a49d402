"""``python -m drac_algo.evaluate``: the challenge metric.

The command is :func:`drac_algo.tools.evaluate.main`.
"""

from drac_algo.tools.evaluate import main

if __name__ == "__main__":
    main()
