"""Deprecated: moved to :mod:`jmeta.run.config`; this alias goes in the next release."""

import jmeta.run.config
from jmeta._deprecation import moved

moved(__name__, jmeta.run.config)
