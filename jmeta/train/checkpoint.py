"""Deprecated: moved to :mod:`jmeta.run.checkpoint`; this alias goes in the next release."""

import jmeta.run.checkpoint
from jmeta._deprecation import moved

moved(__name__, jmeta.run.checkpoint)
