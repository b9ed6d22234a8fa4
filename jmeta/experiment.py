"""Deprecated: moved to :mod:`jmeta.run.experiment`; this alias goes in the next release."""

import jmeta.run.experiment
from jmeta._deprecation import moved

moved(__name__, jmeta.run.experiment)
