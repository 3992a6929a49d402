"""drac-algo: DRAC2022 Task 1 lesion segmentation on ultra-wide-field OCT angiography.

Importing the package sets ``NO_ALBUMENTATIONS_UPDATE=1`` before albumentations can be imported,
because albumentations otherwise queries a package index on import; nothing in this project may
touch the network at run time.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
