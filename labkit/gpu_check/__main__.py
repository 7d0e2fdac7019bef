"""``python -m labkit.gpu_check`` is ``labkit gpu-check`` (runs from the repository root without installing labkit)."""

import sys

from labkit.gpu_check import main

sys.exit(main())
