"""Deprecated: moved to :mod:`jmeta.run.tensorboard`; this alias goes in the next release."""

import jmeta.run.tensorboard
from jmeta._deprecation import moved

moved(__name__, jmeta.run.tensorboard)
