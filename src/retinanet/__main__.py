"""``python -m retinanet ...`` (also what ``torchrun -m retinanet`` runs)."""

import sys

from retinanet.cli import main

sys.exit(main())
