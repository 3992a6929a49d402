"""``python -m drac_algo.synth``: phantom data.

The command is :func:`drac_algo.tools.synth.__main__.main`.
"""

from drac_algo.tools.synth.__main__ import main

if __name__ == "__main__":
    main()
