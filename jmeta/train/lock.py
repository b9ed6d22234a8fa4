"""Deprecated: moved to :mod:`jmeta.run.lock`; this alias goes in the next release."""

import jmeta.run.lock
from jmeta._deprecation import moved

moved(__name__, jmeta.run.lock)
