"""Deprecated: renamed :mod:`jmeta.learned_optim.optimizees`; this alias goes in the next release."""

import jmeta.learned_optim.optimizees
from jmeta._deprecation import moved

moved(__name__, jmeta.learned_optim.optimizees)
