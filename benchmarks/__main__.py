"""``python -m benchmarks``: see ``benchmarks.runner`` and ``python -m benchmarks --help``."""
import sys

from benchmarks.runner import main

sys.exit(main())
