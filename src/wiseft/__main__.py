"""``python -m wiseft ...``: the ``wiseft`` command, also under torchrun
(``torchrun --nproc_per_node N -m wiseft run CONFIG.yaml``)."""

import sys

from wiseft.cli import main

if __name__ == "__main__":
    sys.exit(main())
