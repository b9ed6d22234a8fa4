"""Deprecated: moved to :mod:`jmeta.run.logs`; this alias goes in the next release."""

import jmeta.run.logs
from jmeta._deprecation import moved

moved(__name__, jmeta.run.logs)
