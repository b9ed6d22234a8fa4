"""Deprecated: moved to :mod:`jmeta.run.interrupt`; this alias goes in the next release."""

import jmeta.run.interrupt
from jmeta._deprecation import moved

moved(__name__, jmeta.run.interrupt)
