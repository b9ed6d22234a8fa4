"""Deprecated: moved to :mod:`jmeta.run.plots`; this alias goes in the next release."""

import jmeta.run.plots
from jmeta._deprecation import moved

moved(__name__, jmeta.run.plots)
