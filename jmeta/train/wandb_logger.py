"""Deprecated: moved to :mod:`jmeta.run.wandb_logger`; this alias goes in the next release."""

import jmeta.run.wandb_logger
from jmeta._deprecation import moved

moved(__name__, jmeta.run.wandb_logger)
