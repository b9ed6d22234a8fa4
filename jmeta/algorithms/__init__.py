"""Meta-learning algorithms sharing one contract (see :mod:`jmeta.algorithms.base`)."""

from jmeta.algorithms.base import (ALGORITHM_BASES, ALGORITHMS, MetaLearner, algorithm_classes, combine,
                                   make_param_filter, partition)
from jmeta.algorithms.maml import (ANIL, BN_MODES, FOMAML, MAML, GradientLearner, MAMLPlusPlus, MetaSGD,
                                   msl_weights)
from jmeta.algorithms.imaml import IMAML
from jmeta.algorithms.metaoptnet import MetaOptNet, crammer_singer_svm
from jmeta.algorithms.protonet import ProtoNet, Prototypes, prototypes, squared_distances
from jmeta.algorithms.r2d2 import R2D2, ClosedFormHead, ridge_regression
from jmeta.algorithms.reptile import Reptile

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_BASES",
    "ANIL",
    "BN_MODES",
    "ClosedFormHead",
    "IMAML",
    "MetaOptNet",
    "ProtoNet",
    "Prototypes",
    "prototypes",
    "squared_distances",
    "R2D2",
    "crammer_singer_svm",
    "ridge_regression",
    "FOMAML",
    "GradientLearner",
    "MAML",
    "MAMLPlusPlus",
    "MetaLearner",
    "MetaSGD",
    "Reptile",
    "algorithm_classes",
    "combine",
    "make_param_filter",
    "msl_weights",
    "partition",
]
