"""``python -m anomaly_vae.cli``: the same as the ``anomaly-vae`` command."""

import sys

from . import main

sys.exit(main())
