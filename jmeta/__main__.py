"""``python -m jmeta`` = the ``jmeta`` command."""

import sys

from jmeta.run.cli import main

sys.exit(main())
