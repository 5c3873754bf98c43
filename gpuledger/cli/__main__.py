"""``python -m gpuledger.cli``: the same as the ``gpuledger`` console script."""

import sys

from gpuledger.cli import main

sys.exit(main())
