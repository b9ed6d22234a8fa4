"""Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015) as a :class:`ClassStore`.

1623 handwritten characters from 50 alphabets, 20 drawings each (one per
drawer), 105x105 binary images.

**Pixel convention.** The raw files are white background, black ink. jmeta
stores ``uint8`` with **ink = 255 and background = 0** (inverted, as most MAML
code does), channel last: ``images[class, drawing, H, W, 1]``.

**Resizing.** ``image_size=28`` (default) resizes each image with Pillow's
LANCZOS filter after converting it to 8-bit grey (``"L"``), so strokes get
anti-aliased grey edges. (Finn et al.'s MAML code calls ``resize`` on the 1-bit
image, where Pillow silently falls back to nearest neighbour; converting
first is what most later code does.) ``image_size=105`` keeps the originals.

**Character order** (fixed, used by every split): the global Omniglot
character id, i.e. the ``XXXX`` of the original file names
``XXXX_YY.png``: ids 1..964 are the 30 background alphabets and 965..1623
the 20 evaluation alphabets, each alphabet contiguous, in the order of
:data:`BACKGROUND_ALPHABETS` then :data:`EVALUATION_ALPHABETS` (the order of
the original release, *not* alphabetical), characters in order within an
alphabet. Class ``i`` of ``"all"`` is id ``i + 1``. Drawing ``k`` is the file
``XXXX_{k+1:02d}.png``. Class names are ``"<alphabet>/character<NN>"``.

**Splits** (``split`` argument):

=================== ======= ====================================================
split               classes characters (0-based positions in the order above)
=================== ======= ====================================================
``"train"``         1200    ``[0, 1200)``: MAML/Vinyals meta-training split
``"val"``           100     ``[1100, 1200)``: the last 100 of ``"train"``
                            (overlaps it; for model selection)
``"train_minus_val"`` 1100  ``[0, 1100)``: ``"train"`` without ``"val"``
``"test"``          423     ``[1200, 1623)``: MAML/Vinyals meta-test split
``"background"``    964     ``[0, 964)``: Lake et al.'s background set
``"evaluation"``    659     ``[964, 1623)``: Lake et al.'s evaluation set
``"all"``           1623    everything
=================== ======= ====================================================

MAML-style code often shuffles the characters before the 1200/423 cut (e.g.
Finn et al. seed Python's ``random`` with 1), so its splits hold different
characters; use :meth:`ClassStore.split` with ``seed`` on ``"all"`` (loaded
without rotations) to mimic that, then :meth:`ClassStore.with_rotations` on
each part. ``rotations=True`` multiplies the classes of the chosen split by 4;
a rotated store refuses to be split (rotations of a character would land on
both sides).

**Sources** (``source`` argument), under ``<data root>/omniglot/``:

* ``"npz"``: ``npz/images_{background,evaluation}.npz``, arrays ``images``
  (bool ``[n_chars, 20, 105, 105]``, True = white) and ``labels``.
* ``"zip"``: the official release ``images_{background,evaluation}.zip``
  (also looked for in ``zips/``), layout
  ``images_background/<Alphabet>/character<NN>/<XXXX>_<YY>.png``. Downloaded
  from :data:`OMNIGLOT_BASE_URL` with sha256 verification when missing and
  ``download=True``.
* ``"auto"``: ``"npz"`` if both npz files exist, else ``"zip"``.

Decoded arrays are cached as ``.npz`` (see :mod:`jmeta.data.paths` for the
folder); the cache key holds the source kind, the source file's sha256 and
the image size, so a changed source or size is decoded again.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from jmeta import validate
from jmeta.data import _cache, _decode
from jmeta.data.download import fetch
from jmeta.data.errors import CorruptDataError, DataNotFoundError
from jmeta.data.paths import PathLike, resolve_cache_dir, resolve_data_dir
from jmeta.data.store import ClassStore

__all__ = [
    "load_omniglot",
    "download_omniglot",
    "OMNIGLOT_SPLITS",
    "OMNIGLOT_BASE_URL",
    "OMNIGLOT_SHA256",
    "BACKGROUND_ALPHABETS",
    "EVALUATION_ALPHABETS",
]

OMNIGLOT_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
"""Where ``images_background.zip`` and ``images_evaluation.zip`` are downloaded from."""

OMNIGLOT_SHA256 = {
    "images_background": "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    "images_evaluation": "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
}
"""sha256 of the official release zips (9464212 and 6462886 bytes)."""

BACKGROUND_ALPHABETS: tuple[tuple[str, int], ...] = (
    ("Arcadian", 26), ("Armenian", 41), ("Asomtavruli_(Georgian)", 40), ("Balinese", 24),
    ("Bengali", 46), ("Blackfoot_(Canadian_Aboriginal_Syllabics)", 14), ("Braille", 26),
    ("Cyrillic", 33), ("Early_Aramaic", 22), ("Syriac_(Estrangelo)", 23),
    ("Anglo-Saxon_Futhorc", 29), ("Futurama", 26), ("Grantha", 43), ("Greek", 24),
    ("Gujarati", 48), ("Hebrew", 22), ("Japanese_(hiragana)", 52),
    ("Inuktitut_(Canadian_Aboriginal_Syllabics)", 16), ("Malay_(Jawi_-_Arabic)", 40),
    ("Japanese_(katakana)", 47), ("Korean", 40), ("Latin", 26), ("Alphabet_of_the_Magi", 20),
    ("Mkhedruli_(Georgian)", 41), ("Burmese_(Myanmar)", 34), ("N_Ko", 33),
    ("Ojibwe_(Canadian_Aboriginal_Syllabics)", 14), ("Sanskrit", 42), ("Tagalog", 17),
    ("Tifinagh", 55),
)
"""``(alphabet, n_characters)`` of the background set, in global id order (ids 1..964)."""

EVALUATION_ALPHABETS: tuple[tuple[str, int], ...] = (
    ("Angelic", 20), ("Atemayar_Qelisayer", 26), ("Atlantean", 26), ("Aurek-Besh", 26),
    ("Avesta", 26), ("Ge_ez", 26), ("Glagolitic", 45), ("Gurmukhi", 45), ("Kannada", 41),
    ("Keble", 26), ("Malayalam", 47), ("Manipuri", 40), ("Mongolian", 30),
    ("Old_Church_Slavonic_(Cyrillic)", 45), ("Oriya", 46), ("Syriac_(Serto)", 23),
    ("Sylheti", 28), ("Tengwar", 25), ("Tibetan", 42), ("ULOG", 26),
)
"""``(alphabet, n_characters)`` of the evaluation set, in global id order (ids 965..1623)."""

N_DRAWINGS = 20
RAW_SIZE = 105
_PARTS = {"images_background": (1, 964, BACKGROUND_ALPHABETS),
          "images_evaluation": (965, 1623, EVALUATION_ALPHABETS)}

# split -> (parts needed, slice of the concatenation of those parts)
OMNIGLOT_SPLITS: Mapping[str, tuple[tuple[str, ...], slice]] = {
    "train": (("images_background", "images_evaluation"), slice(0, 1200)),
    "val": (("images_background", "images_evaluation"), slice(1100, 1200)),
    "train_minus_val": (("images_background", "images_evaluation"), slice(0, 1100)),
    "test": (("images_background", "images_evaluation"), slice(1200, 1623)),
    "background": (("images_background",), slice(0, 964)),
    "evaluation": (("images_evaluation",), slice(0, 659)),
    "all": (("images_background", "images_evaluation"), slice(0, 1623)),
}
"""The named splits: parts read and the slice of characters taken (see module doc)."""

_SOURCES = ("auto", "npz", "zip")
_MEMBER_RE = re.compile(
    r"^(images_background|images_evaluation)/([^/]+)/character(\d+)/(\d{4})_(\d{2})\.png$")


def _class_names(part: str) -> list[str]:
    _, _, table = _PARTS[part]
    return [f"{alpha}/character{c + 1:02d}" for alpha, n in table for c in range(n)]


def _npz_path(root: Path, part: str) -> Path:
    return root / "omniglot" / "npz" / f"{part}.npz"


def _zip_candidates(root: Path, part: str) -> list[Path]:
    return [root / "omniglot" / f"{part}.zip", root / "omniglot" / "zips" / f"{part}.zip"]


def download_omniglot(data_dir: PathLike | None = None, *, base_url: str = OMNIGLOT_BASE_URL,
                      sha256: Mapping[str, str | None] | None = None,
                      parts: tuple[str, ...] = ("images_background", "images_evaluation"),
                      timeout: float = 60.0) -> list[Path]:
    """Downloads the official Omniglot zips to ``<data root>/omniglot/``.

    Files already present with the right checksum are not downloaded again.

    Args:
      data_dir: data root (default: ``JMETA_DATA_DIR`` or ``~/.cache/jmeta/data``).
      base_url: URL prefix; ``<base_url><part>.zip`` is fetched.
      sha256: expected checksum per part; a part it leaves out is checked
        against :data:`OMNIGLOT_SHA256`, a part mapped to ``None`` is not
        checked (for mirrors that repackage the zips).
      parts: which of ``"images_background"``, ``"images_evaluation"`` to fetch.
      timeout: socket timeout in seconds.

    Returns:
      The paths of the zip files.
    """
    root = resolve_data_dir(data_dir)
    sums = {**OMNIGLOT_SHA256, **(sha256 or {})}
    out = []
    for part in parts:
        if part not in _PARTS:
            raise ValueError(f"download_omniglot: unknown part {part!r}; valid: {sorted(_PARTS)}")
        url = base_url.rstrip("/") + f"/{part}.zip"
        out.append(fetch(url, root / "omniglot" / f"{part}.zip", sums.get(part), timeout=timeout))
    return out


def _decode_npz(path: Path, part: str, size: int) -> tuple[np.ndarray, list[str]]:
    first, last, _ = _PARTS[part]
    n = last - first + 1
    raw = _cache.load_npz(path, ("images",))["images"]
    if raw.shape != (n, N_DRAWINGS, RAW_SIZE, RAW_SIZE) or raw.dtype != np.bool_:
        raise CorruptDataError(f"{path}: expected 'images' bool {(n, N_DRAWINGS, RAW_SIZE, RAW_SIZE)}, "
                               f"got {raw.dtype} {raw.shape}")
    ink = np.where(raw, np.uint8(0), np.uint8(255))  # True = white background -> 0
    flat = ink.reshape(-1, RAW_SIZE, RAW_SIZE)
    if size != RAW_SIZE:
        flat = _decode.stack(_decode.resize_gray(im, size) for im in flat)
    return flat.reshape(n, N_DRAWINGS, size, size, 1), _class_names(part)


def _decode_zip(path: Path, part: str, size: int) -> tuple[np.ndarray, list[str]]:
    first, last, _ = _PARTS[part]
    n = last - first + 1
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptDataError(f"{path}: not a readable zip file ({e}); it is truncated or "
                               f"corrupted: delete it and download it again") from e
    with z:
        entries: dict[tuple[int, int], zipfile.ZipInfo] = {}
        names: dict[int, str] = {}
        for info in z.infolist():
            m = _MEMBER_RE.match(info.filename)
            if m is None:
                continue  # folders, __MACOSX/, .DS_Store ...
            top, alphabet, char_no, cid, k = m.groups()
            if top != part:
                raise CorruptDataError(f"{path}: member {info.filename!r} is not under {part}/")
            cid, k = int(cid), int(k) - 1
            if not first <= cid <= last or not 0 <= k < N_DRAWINGS:
                raise CorruptDataError(f"{path}: member {info.filename!r} has character id {cid} or "
                                       f"drawing {k + 1} outside [{first}, {last}] x [1, {N_DRAWINGS}]")
            entries[(cid, k)] = info
            names[cid] = f"{alphabet}/character{int(char_no):02d}"
        if len(entries) != n * N_DRAWINGS:
            missing = sorted(set((c, k) for c in range(first, last + 1) for k in range(N_DRAWINGS))
                             - set(entries))
            raise CorruptDataError(
                f"{path}: expected {n} characters x {N_DRAWINGS} drawings = {n * N_DRAWINGS} PNGs "
                f"named {part}/<Alphabet>/character<NN>/<XXXX>_<YY>.png, found {len(entries)}; "
                f"first missing (id, drawing): {[(c, k + 1) for c, k in missing[:5]]}")
        order = [entries[(c, k)] for c in range(first, last + 1) for k in range(N_DRAWINGS)]
        try:
            blobs = [(info.filename, z.read(info)) for info in order]
        except (zipfile.BadZipFile, EOFError, OSError, zipfile.error) as e:
            raise CorruptDataError(f"{path}: cannot read a member ({e}); the file is truncated or "
                                   f"corrupted: delete it and download it again") from e

    def dec(item):
        name, data = item
        img = _decode.decode_image(data, mode="L", size=None, name=f"{path}:{name}")
        img = 255 - img  # white background -> 0, ink -> 255
        return _decode.resize_gray(img, size)

    flat = _decode.stack(dec(b) for b in blobs)
    return (flat.reshape(n, N_DRAWINGS, size, size, 1),
            [names[c] for c in range(first, last + 1)])


def _load_part(root: Path, part: str, source: str, size: int, cache: bool,
               cache_dir: PathLike | None, download: bool) -> tuple[np.ndarray, list[str], dict]:
    """One of images_background / images_evaluation, decoded (cached)."""
    if source == "npz":
        src = _npz_path(root, part)
        if not src.is_file():
            raise DataNotFoundError(
                f"Omniglot file {src} does not exist (source='npz'). Place "
                f"images_background.npz and images_evaluation.npz in {src.parent}, use "
                f"source='zip', or set data_dir / JMETA_DATA_DIR to the folder that holds omniglot/.")
    else:
        src = next((p for p in _zip_candidates(root, part) if p.is_file()), None)
        if src is None:
            if not download:
                raise DataNotFoundError(
                    f"Omniglot file {part}.zip not found; looked in "
                    f"{[str(p) for p in _zip_candidates(root, part)]}. Pass download=True, or download "
                    f"{OMNIGLOT_BASE_URL}{part}.zip by hand and place it at "
                    f"{_zip_candidates(root, part)[0]} (data root: data_dir argument or JMETA_DATA_DIR).")
            (src,) = download_omniglot(root, parts=(part,))
    info = {"source": source, "file": str(src), "cache_hit": False, "cache_path": None}
    if cache:
        digest = _cache.sha256_file(src)
        cpath = resolve_cache_dir(cache_dir, root) / (
            f"omniglot-{part}-{source}-{size}px-v{_cache.CACHE_VERSION}-{digest[:16]}.npz")
        info["cache_path"] = str(cpath)
        hit = _cache.cached_arrays(cpath, ("images", "class_names"))
        names = _class_names(part)
        if hit is not None and (hit["images"].dtype == np.uint8 and
                                hit["images"].shape == (len(names), N_DRAWINGS, size, size, 1) and
                                hit["class_names"].tolist() == names):
            info["cache_hit"] = True
            return hit["images"], names, info
        if hit is not None:
            warnings.warn(f"ignoring cache {cpath}: it holds {hit['images'].dtype} {hit['images'].shape}, not "
                          f"uint8 {(len(names), N_DRAWINGS, size, size, 1)} with {part}'s characters; "
                          "decoding again", stacklevel=3)
    decode = _decode_npz if source == "npz" else _decode_zip
    images, names = decode(src, part, size)
    if cache:
        _cache.save_npz_atomic(cpath, {"images": images, "class_names": np.asarray(names, dtype=str)},
                               compress=size >= 64)  # 105px: binary images compress ~25x
    return images, names, info


def load_omniglot(split: str, *, data_dir: PathLike | None = None, image_size: int = 28,
                  rotations: bool = False, source: str = "auto", cache: bool = True,
                  cache_dir: PathLike | None = None, download: bool = True) -> ClassStore:
    """Loads an Omniglot split as a :class:`ClassStore` ``[n_chars, 20, S, S, 1]`` uint8.

    See the module docstring for the pixel convention (ink = 255), the
    character order, the splits and the sources.

    Args:
      split: one of ``"train"`` (1200), ``"val"`` (100, inside train),
        ``"train_minus_val"`` (1100), ``"test"`` (423), ``"background"`` (964),
        ``"evaluation"`` (659), ``"all"`` (1623).
      data_dir: data root holding ``omniglot/`` (default: ``JMETA_DATA_DIR``
        or ``~/.cache/jmeta/data``).
      image_size: side ``S`` of the square output; 105 keeps the originals,
        anything else is a LANCZOS resize (28 is standard).
      rotations: add 90/180/270-degree rotations as new classes (4x classes).
      source: ``"auto"``, ``"npz"`` or ``"zip"``.
      cache: read and write the decoded-array cache.
      cache_dir: cache folder (default: ``JMETA_CACHE_DIR``, else
        ``<data root>/cache`` if writable, else ``~/.cache/jmeta/cache``).
      download: with the zip source, download missing zips from
        :data:`OMNIGLOT_BASE_URL` (sha256-verified).

    Returns:
      The store; ``store.info`` holds ``source``, ``files``, ``cache_paths``
      and ``cache_hit`` (True when every part came from the cache).

    Raises:
      ValueError: an unknown ``split``/``source`` or a bad ``image_size``.
      DataNotFoundError: source files missing (the message lists the paths).
      CorruptDataError: a source file is truncated or malformed.
    """
    if split not in OMNIGLOT_SPLITS:
        raise ValueError(f"load_omniglot: unknown split {split!r}; valid: {list(OMNIGLOT_SPLITS)}")
    if source not in _SOURCES:
        raise ValueError(f"load_omniglot: unknown source {source!r}; valid: {list(_SOURCES)}")
    image_size = validate.integer("load_omniglot: image_size (28 or 105 are usual)", image_size, min=1, max=1024)
    root = resolve_data_dir(data_dir)
    parts, sl = OMNIGLOT_SPLITS[split]
    if source == "auto":
        source = "npz" if all(_npz_path(root, p).is_file() for p in parts) else "zip"
    loaded = [_load_part(root, p, source, image_size, cache, cache_dir, download) for p in parts]
    images = loaded[0][0] if len(loaded) == 1 else np.concatenate([l[0] for l in loaded])
    names = [n for l in loaded for n in l[1]]
    info = {"source": source, "files": [l[2]["file"] for l in loaded],
            "cache_paths": [l[2]["cache_path"] for l in loaded],
            "cache_hit": bool(cache) and all(l[2]["cache_hit"] for l in loaded),
            "pixels": "uint8, ink=255, background=0"}
    store = ClassStore(np.ascontiguousarray(images[sl]), names[sl], f"omniglot/{split}", info)
    return store.with_rotations() if rotations else store
