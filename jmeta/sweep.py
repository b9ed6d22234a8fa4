"""Deprecated: moved to :mod:`jmeta.run.search`; this alias goes in the next release."""

import jmeta.run.search
from jmeta._deprecation import moved

moved(__name__, jmeta.run.search)
