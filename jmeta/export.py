"""Deprecated: moved to :mod:`jmeta.run.export`; this alias goes in the next release."""

import jmeta.run.export
from jmeta._deprecation import moved

moved(__name__, jmeta.run.export)
