"""``python -m drac_algo.submission``: check and zip the submission.

The command is :func:`drac_algo.data.submission.main`.
"""

from drac_algo.data.submission import main

if __name__ == "__main__":
    main()
