"""``python -m drac_algo.doctor``: what this machine will do, and why.

The command is :func:`drac_algo.serve.doctor.main`.
"""

from drac_algo.serve.doctor import main

if __name__ == "__main__":
    main()
