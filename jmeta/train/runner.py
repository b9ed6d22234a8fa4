"""Deprecated: moved to :mod:`jmeta.run.runner`; this alias goes in the next release."""

import jmeta.run.runner
from jmeta._deprecation import moved

moved(__name__, jmeta.run.runner)
