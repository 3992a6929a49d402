"""``python -m drac_algo.ablate``: the ablation table.

The command is :func:`drac_algo.tools.ablate.__main__.main`.
"""

from drac_algo.tools.ablate.__main__ import main

if __name__ == "__main__":
    main()
