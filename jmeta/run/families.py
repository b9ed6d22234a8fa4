"""The image task families' options (the ``task`` section of a config), checked where they are made.

The episodes themselves are drawn by :class:`jmeta.tasks.episodes.EpisodeSampler` from the class stores
:func:`jmeta.data.load_omniglot` / :func:`jmeta.data.load_miniimagenet` return; these records hold what the
wiring (:mod:`jmeta.run.experiment`) passes to them.
"""

from __future__ import annotations

import dataclasses

from jmeta import validate


@dataclasses.dataclass(frozen=True)
class _Episodes:
    n_way: int = 5
    k_support: int = 1
    k_query: int = 15

    def __post_init__(self):
        object.__setattr__(self, "n_way", validate.integer("n_way", self.n_way, min=2))
        object.__setattr__(self, "k_support", validate.integer("k_support", self.k_support, min=1))
        object.__setattr__(self, "k_query", validate.integer("k_query", self.k_query, min=1))


@dataclasses.dataclass(frozen=True)
class Omniglot(_Episodes):
    """Omniglot episodes.

    Attributes:
      n_way, k_support, k_query: classes per episode, support and query examples per class.
      rotations: the 90/180/270-degree rotations of the training characters as extra classes.
      image_size: image side length.
    """

    rotations: bool = True
    image_size: int = 28

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "rotations", validate.flag("rotations", self.rotations))
        object.__setattr__(self, "image_size", validate.integer("image_size", self.image_size, min=1))


@dataclasses.dataclass(frozen=True)
class MiniImageNet(_Episodes):
    """mini-ImageNet episodes.

    Attributes:
      n_way, k_support, k_query: classes per episode, support and query examples per class.
      image_size: image side length.
      allow_pickle: allow loading from a pickle (``mini-imagenet-cache-*.pkl``) when no zip or npz is there;
        unpickling can run arbitrary code, so only for files you trust (``jmeta train --allow-pickle``).
    """

    image_size: int = 84
    allow_pickle: bool = False

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "image_size", validate.integer("image_size", self.image_size, min=1))
        object.__setattr__(self, "allow_pickle", validate.flag("allow_pickle", self.allow_pickle))
