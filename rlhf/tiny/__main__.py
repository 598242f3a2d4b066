"""``python -m rlhf.tiny OUTDIR [--family NAME]``: see `rlhf.tiny`."""

import sys

from rlhf.tiny import main

sys.exit(main())
