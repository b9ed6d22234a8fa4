"""``python -m jmeta`` = the ``jmeta`` command."""

import sys

from jmeta.cli import main

sys.exit(main())
