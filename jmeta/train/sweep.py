"""Deprecated: renamed :mod:`jmeta.train.vectorized` (the command-line search is :mod:`jmeta.run.search`);
this alias goes in the next release."""

import jmeta.train.vectorized
from jmeta._deprecation import moved

moved(__name__, jmeta.train.vectorized)
