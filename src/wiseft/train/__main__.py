"""``torchrun --nproc_per_node N -m wiseft.train CONFIG.yaml [--resume]``: the launcher
lives in :mod:`wiseft.launch`, above the pipeline it drives."""

import sys

from ..launch import main

if __name__ == "__main__":
    sys.exit(main())
