"""Numerical building blocks with implementations chosen per backend (see :mod:`jmeta.ops.conv`)."""

from jmeta.ops.conv import (CONV_IMPLS, conv2d, patches, recommended_conv_impl, recommended_task_parallel,
                            resolve_conv_impl)

__all__ = ["CONV_IMPLS", "conv2d", "patches", "recommended_conv_impl", "recommended_task_parallel",
           "resolve_conv_impl"]
