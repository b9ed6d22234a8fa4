"""Meta-learning algorithms sharing one contract (see :mod:`jmeta.algorithms.base`)."""

from jmeta.algorithms.base import MetaLearner, combine, make_param_filter, partition
from jmeta.algorithms.maml import (ANIL, BN_MODES, FOMAML, MAML, GradientLearner, MAMLPlusPlus, MetaSGD,
                                   msl_weights)
from jmeta.algorithms.reptile import Reptile

__all__ = [
    "ANIL",
    "BN_MODES",
    "FOMAML",
    "GradientLearner",
    "MAML",
    "MAMLPlusPlus",
    "MetaLearner",
    "MetaSGD",
    "Reptile",
    "combine",
    "make_param_filter",
    "msl_weights",
    "partition",
]
