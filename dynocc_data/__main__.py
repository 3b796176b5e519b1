"""``python -m dynocc_data ...`` is the ``dynocc-data`` command (handy under ``torchrun -m`` and ``srun``)."""

import sys

from .tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
