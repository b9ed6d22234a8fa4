"""Deprecated: moved to :mod:`jmeta.run.cli`; this alias goes in the next release."""

import jmeta.run.cli
from jmeta._deprecation import moved

moved(__name__, jmeta.run.cli)
