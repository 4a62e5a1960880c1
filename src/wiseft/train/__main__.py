"""``torchrun --nproc_per_node N -m wiseft.train CONFIG.yaml [--resume]``."""

import sys

from .launch import main

if __name__ == "__main__":
    sys.exit(main())
