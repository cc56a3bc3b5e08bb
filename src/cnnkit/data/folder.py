"""A folder of the user's own images, decoded: FOLDER/<class>/<image>, or split folders (see `layout`).

Images are decoded once, in parallel, into uint8 tensors and cached on disk (keyed by a hash of every
file's content, so any changed file means a fresh decode), and the next run starts at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cnnkit.core.errors import CnnkitError
from cnnkit.core.machine import is_main_process
from cnnkit.core.progress import bar, say
from cnnkit.data.images import DECODE_ERRORS, decode_image, has_colour, jpeg_header, peek_image
from cnnkit.data.layout import scan_folder
from cnnkit.data.ondisk import DiskImages, DiskRows, MemoryRows, default_memory_budget
from cnnkit.data.sets import ImageSet, RawData

DEFAULT_SIZE_CAP = 128  # the default input size is the folder's most common size, but no larger than this
CACHE_FORMAT = "5"  # in the key: raise it whenever decoding changes a pixel, or old caches mislead eval and report
THREADED_DECODE_PIXELS = 128 * 128  # above this mean image size, decoding runs on several threads
DECODE_CHUNK = 256
HASH_CHUNK = 1 << 20


Header = tuple[tuple[int, int], bool]  # (width, height), grey by the file's mode


class AtMost(int):
    """An image size given as a cap, not a size: the folder's most common size, but no larger than this."""


@dataclass(frozen=True)
class Reading:
    """How a folder's files are read: bad ones refused or skipped (and listed), and the rule that makes a
    non-square image square (one of RESIZE_RULES)."""

    skip_bad_images: bool = False
    resize: str = "squash"
    memory_budget: int | None = None  # bytes of decoded images kept in memory (None: default_memory_budget())
    listed: bool = True  # say which files were left out (a second read of the folder, at another size, need not)


PLAIN_READING = Reading()


def load_folder(root: Path, image_size: int | None, reading: Reading, cache_dir: Path, max_size: int) -> RawData:
    """The folder's images at `image_size`, or (None) at their most common size, but no larger than `max_size`."""
    files = scan_folder(root, reading.listed)
    size_rule = f"{image_size or f'max{max_size}'}|{reading.resize}"
    key, jpeg_headers = _cache_key(root, size_rule, files)
    cache_file = cache_dir / "folders" / f"{key}.safetensors"
    raw = _read_cache(cache_file, reading.memory_budget or default_memory_budget())
    if raw is None:
        raw = _decode_folder(files, (image_size, max_size), reading, jpeg_headers, cache_file.with_suffix(".images"))
        _write_cache(cache_file, raw)
    if raw.skipped and not reading.skip_bad_images:
        raise CnnkitError(
            f"{len(raw.skipped)} image file(s) cannot be decoded; fix or remove them, or pass --skip-bad-images to "
            "train without them:",
            raw.skipped,
        )
    for line in raw.skipped if reading.listed else ():
        say(f"skipped bad image {line}")
    return raw


def _decode_folder(
    files: dict[str, list[tuple[str, str]]],
    sizes: tuple[int | None, int],
    reading: Reading,
    known: dict[str, Header],
    spill: Path,
) -> RawData:
    """Decode every image at sizes[0], else at the most common size up to sizes[1]; the ones that fail are left
    out and listed in `skipped`. `known`: headers already read. Past the memory budget the images stream into
    the file `spill` and stay there."""
    every = [path for items in files.values() for path, _ in items]
    headers: dict[str, Header] = {}
    bad = _parallel(lambda p: known.get(p) or peek_image(p), every, "reading image headers", 1, headers.__setitem__)
    if not headers:
        raise CnnkitError(f"none of the {len(every)} image files could be read, e.g. {every[0]}: {bad[every[0]]}")
    channels, channels_reason = _grey_or_colour(headers)
    common = Counter(size for size, _ in headers.values()).most_common(1)[0][0]  # the most common (width, height)
    image_size = sizes[0] or min(max(common), sizes[1])
    good = {part: [(p, c) for p, c in items if p in headers] for part, items in files.items()}
    shape = (channels, image_size, image_size)
    on_disk = len(headers) * math.prod(shape) > (reading.memory_budget or default_memory_budget())
    rows = DiskRows(spill, shape) if on_disk else MemoryRows({part: len(items) for part, items in good.items()}, shape)
    classes = sorted({c for _, c in files["train" if "train" in files else "all"]})
    mean_pixels = sum(w * h for (w, h), _ in headers.values()) / len(headers)
    # PIL lets go of the GIL while it decodes and resizes, which pays for photos; tiny images are bound by
    # Python's own overhead, and threads only slow them down (measured: 32x32 JPEGs 1.9x slower with 8)
    threads = min(8, 2 * (os.cpu_count() or 1)) if mean_pixels > THREADED_DECODE_PIXELS else 1
    with rows:
        labels = _decode_into(
            rows, good, classes, lambda p: decode_image(p, image_size, channels, reading.resize), threads, bad
        )
    parts = {part: ImageSet(rows.images(part), torch.tensor(labels[part], dtype=torch.int64)) for part in good}
    skipped = [f"{path}: {reason}" for path, reason in sorted(bad.items())]
    return RawData(classes, parts, skipped, channels_reason)


def _grey_or_colour(headers: dict[str, Header]) -> tuple[int, str]:
    """1 channel when every image is grey by its pixels, else 3; with why. Only the files whose header says
    colour are opened, up to the first in colour: a colour folder costs one more decode, not a second pass."""
    coloured_modes = [path for path, (_, grey) in headers.items() if not grey]
    if not coloured_modes:
        return 1, "grey: every file is greyscale"
    in_colour = next((path for path in coloured_modes if _in_colour(path)), None)
    if in_colour is None:
        return 1, "grey: every image's colour channels are equal"
    return 3, f"colour: {in_colour} is in colour"


def _in_colour(path: str) -> bool:
    """`has_colour`, but a file that cannot be decoded has no say: the decode leaves it out and lists it."""
    try:
        return has_colour(path)
    except DECODE_ERRORS:
        return False


def _decode_into(
    rows: MemoryRows | DiskRows,
    good: dict[str, list[tuple[str, str]]],
    classes: list[str],
    decode: Callable[[str], torch.Tensor],
    threads: int,
    bad: dict[str, str],
) -> dict[str, list[int]]:
    """Decode each part's images into `rows` in order, as they come; the labels of those kept, by part. Files
    that fail go to `bad`."""
    index, labels = {c: i for i, c in enumerate(classes)}, dict[str, list[int]]()
    for part, items in good.items():
        label_of, labels[part] = dict(items), []

        def keep(path: str, pixels: torch.Tensor, part: str = part, label_of: dict = label_of) -> None:
            rows.add(part, pixels)
            labels[part].append(index[label_of[path]])

        bad.update(_parallel(decode, [p for p, _ in items], f"decoding {part} images", threads, keep))
    return labels


def _parallel(fn, paths: list[str], desc: str, threads: int, keep: Callable[[str, Any], None]) -> dict[str, str]:
    """fn over paths on `threads` threads, in chunks (a future per file costs more than a small decode), each
    result handed to `keep(path, result)` in order as it comes; returns the errors by path."""
    errors = {}

    def attempt(chunk: list[str]) -> list[tuple[str, object, str | None]]:
        outcomes: list[tuple[str, object, str | None]] = []
        for path in chunk:
            try:
                outcomes.append((path, fn(path), None))
            except DECODE_ERRORS as e:
                outcomes.append((path, None, str(e) or type(e).__name__))
        return outcomes

    chunks = [paths[i : i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)]
    # one thread works in this one: torch's ops on a new thread fan out to its intra-op threads, which costs a
    # small JPEG's decode 1.5x (measured)
    with ThreadPoolExecutor(max_workers=threads) as pool, bar(len(paths), desc) as progress:
        for outcomes in pool.map(attempt, chunks) if threads > 1 else map(attempt, chunks):
            for path, value, error in outcomes:
                if error is None:
                    keep(path, value)
                else:
                    errors[path] = error
            progress.update(len(outcomes))
    return errors


def _cache_key(root: Path, size_rule: str, files: dict[str, list[tuple[str, str]]]) -> tuple[str, dict[str, Header]]:
    """A hash of every file's bytes, place and class: any change to any image means a new cache. (Reading
    60,000 small JPEGs for it takes about a second; decoding them, several.) With it, the headers of the
    JPEGs, read on the way (a glance at bytes already read, where PIL's open would cost a second again)."""
    digest = hashlib.blake2b(f"{CACHE_FORMAT}|{size_rule}".encode(), digest_size=16)
    prefix = len(os.path.join(root, ""))  # scan_folder's paths all start with the root (os.path.relpath is slow)
    headers = {}
    for part, items in sorted(files.items()):
        for path, label in items:
            with open(path, "rb") as f:  # names may hold bytes that are not UTF-8: kept as they are
                digest.update(f"|{part}|{label}|{path[prefix:]}|".encode("utf-8", "surrogateescape"))
                first = f.read(HASH_CHUNK)
                jpeg = jpeg_header(first) if first[:2] == b"\xff\xd8" else None
                if jpeg:
                    headers[path] = (jpeg[:2], jpeg[2] == 1)
                digest.update(first)
                for chunk in iter(lambda: f.read(HASH_CHUNK), b""):  # bounded memory, whatever the file's size
                    digest.update(chunk)
    return digest.hexdigest(), headers


def _write_cache(path: Path, raw: RawData) -> None:
    """The decoded parts in one safetensors file; parts kept on disk (DiskImages) are in the raw file beside
    it, and this one holds their labels and where their rows are."""
    if not is_main_process():  # one writer per run
        return
    tensors, on_disk, count, shape = {}, dict[str, tuple[int, int]](), 0, [0, 0, 0]
    for part, s in raw.parts.items():
        tensors[f"{part}.labels"] = s.labels
        if isinstance(s.images, DiskImages):
            first = int(s.images.rows[0]) if len(s.images) else 0
            on_disk[part], count, shape = (first, len(s.images)), s.images.count, list(s.images.row_shape)
        else:
            tensors[f"{part}.images"] = s.images.contiguous()
    meta = {
        "classes": json.dumps(raw.classes),
        "skipped": json.dumps(raw.skipped),
        "channels_reason": raw.channels_reason,
    }
    if on_disk:
        meta["on_disk"] = json.dumps({"count": count, "shape": shape, "parts": on_disk})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file(tensors, str(partial), metadata=meta)
        partial.replace(path)  # atomic: a reader never sees half a cache file
    except OSError as e:
        say(f"note: could not write the data cache {path} ({e}); the next run will decode the images again")


def _read_cache(path: Path, memory_budget: int) -> RawData | None:
    """The cached parts, or None: no cache, a damaged one, or one held in memory that is past the budget now."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            if sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k.endswith(".images")) > memory_budget:
                return None  # decoded again, this time into a file on disk
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        disk = json.loads(meta.get("on_disk", "null"))
        names = [key.removesuffix(".labels") for key in tensors if key.endswith(".labels")]
        parts = {part: ImageSet(_images(tensors, part, path, disk), tensors[f"{part}.labels"]) for part in names}
        return RawData(json.loads(meta["classes"]), parts, json.loads(meta["skipped"]), meta["channels_reason"])
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None


def _images(tensors: dict[str, torch.Tensor], part: str, path: Path, disk: dict | None) -> torch.Tensor | DiskImages:
    """A cached part's images: in the cache file, or in the raw file beside it (which must be whole)."""
    if f"{part}.images" in tensors:
        return tensors[f"{part}.images"]
    if disk is None:
        raise KeyError(f"{part}.images")
    first, n = disk["parts"][part]
    return DiskImages(path.with_suffix(".images"), disk["count"], tuple(disk["shape"]), torch.arange(first, first + n))
