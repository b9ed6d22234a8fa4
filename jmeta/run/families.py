"""The image task families' options (the ``task`` section of a config), checked where they are made.

The episodes themselves are drawn by :class:`jmeta.tasks.episodes.EpisodeSampler` from the class stores
:func:`jmeta.data.load_omniglot` / :func:`jmeta.data.load_miniimagenet` return; these records hold what the
wiring (:mod:`jmeta.run.experiment`) passes to them.
"""

from __future__ import annotations

from jmeta import validate
from jmeta._struct import frozen_dataclass, hparam


@frozen_dataclass
class _Episodes:
    n_way: int = hparam(5, validate.integer, min=2)
    k_support: int = hparam(1, validate.integer, min=1)
    k_query: int = hparam(15, validate.integer, min=1)


@frozen_dataclass
class Omniglot(_Episodes):
    """Omniglot episodes.

    Attributes:
      n_way, k_support, k_query: classes per episode, support and query examples per class.
      rotations: the 90/180/270-degree rotations of the training characters as extra classes.
      image_size: image side length.
    """

    rotations: bool = hparam(True, validate.flag)
    image_size: int = hparam(28, validate.integer, min=1)


@frozen_dataclass
class MiniImageNet(_Episodes):
    """mini-ImageNet episodes.

    Attributes:
      n_way, k_support, k_query: classes per episode, support and query examples per class.
      image_size: image side length.
      allow_pickle: allow loading from a pickle (``mini-imagenet-cache-*.pkl``) when no zip or npz is there;
        unpickling can run arbitrary code, so only for files you trust (``jmeta train --allow-pickle``).
    """

    image_size: int = hparam(84, validate.integer, min=1)
    allow_pickle: bool = hparam(False, validate.flag)
