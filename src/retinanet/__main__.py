"""``python -m retinanet ...`` (also what ``torchrun -m retinanet`` runs)."""

import sys

from .cli import main

sys.exit(main())
