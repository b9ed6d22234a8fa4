"""Image decoding helpers shared by the loaders (private)."""

from __future__ import annotations

import io
from typing import Iterable

import numpy as np


def resize_gray(img: np.ndarray, size: int) -> np.ndarray:
    """Resizes a 2-D uint8 image to ``size x size`` with Pillow's LANCZOS filter."""
    from PIL import Image
    if img.shape == (size, size):
        return img
    im = Image.fromarray(np.ascontiguousarray(img))
    return np.asarray(im.resize((size, size), resample=Image.LANCZOS))


def decode_image(data: bytes, *, mode: str, size: int | None, name: str) -> np.ndarray:
    """Decodes PNG/JPEG bytes to a uint8 array in ``mode`` ("L" or "RGB").

    Args:
      data: encoded bytes.
      mode: Pillow mode to convert to.
      size: if given and different, resize to ``size x size`` (LANCZOS).
      name: file or member name, for the error message.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), resample=Image.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        from jmeta.data.errors import CorruptDataError
        raise CorruptDataError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e


def stack(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """``np.stack`` that keeps uint8."""
    return np.stack(list(arrays)).astype(np.uint8, copy=False)
