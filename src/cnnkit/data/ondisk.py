"""Decoded images that stay on disk, for folders larger than the memory budget: one raw uint8 file of
(N, C, H, W) rows, read a batch at a time (sorted, with neighbouring rows in one read).

`DiskImages` stands in for the uint8 tensor of an `ImageSet`: indexing it with a slice or an index tensor
reads those rows, `take` and `concat` make index views without reading, and `split` reads in chunks. Reads go
through the file (not a memory map), so the page cache holds what is hot and the process's own memory
stays flat however large the folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from cnnkit.core.errors import CnnkitError

MEMORY_FRACTION = 0.25  # by default, decoded images may take this share of the machine's memory


def default_memory_budget() -> int:
    """Bytes of decoded images one process holds in memory before a folder is kept on disk instead."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): assume a small machine
        total = 8 << 30
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # torchrun's processes on this machine each hold a copy
    return int(total * MEMORY_FRACTION) // max(1, processes)


def loaded(images: torch.Tensor | DiskImages) -> torch.Tensor:
    """The images as one tensor in memory: read whole from disk if they are kept there."""
    return images[: len(images)] if isinstance(images, DiskImages) else images


class DiskImages:
    """Rows `rows` of the raw image file `path`, which holds `count` images of `row_shape`."""

    def __init__(self, path: Path, count: int, row_shape: tuple[int, int, int], rows: torch.Tensor | None = None):
        self.path, self.count, self.row_shape = path, count, row_shape
        self.rows = torch.arange(count) if rows is None else rows
        self.device = torch.device("cpu")
        self.row_bytes = row_shape[0] * row_shape[1] * row_shape[2]
        if path.stat().st_size != count * self.row_bytes:
            raise CnnkitError(f"the decoded images in {path} are cut short; delete the file and run again")

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.row_shape))

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device: torch.device | str) -> DiskImages:
        """The same rows, read onto `device`."""
        moved = DiskImages(self.path, self.count, self.row_shape, self.rows)
        moved.device = torch.device(device)
        return moved

    def take(self, index: torch.Tensor) -> DiskImages:
        """A view of some of the rows, read later."""
        return DiskImages(self.path, self.count, self.row_shape, self.rows[index.cpu()])

    @staticmethod
    def concat(parts: list[DiskImages]) -> DiskImages:
        if len({p.path for p in parts}) != 1:
            raise CnnkitError("images kept on disk can only be pooled from one folder's file")
        first = parts[0]
        return DiskImages(first.path, first.count, first.row_shape, torch.cat([p.rows for p in parts]))

    def split(self, size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def __getitem__(self, index: slice | torch.Tensor) -> torch.Tensor:
        rows = self.rows[index] if isinstance(index, slice) else self.rows[index.cpu()]
        return self._read(rows).to(self.device)

    def _read(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows, read in sorted order with each run of neighbours in one read, then put back in order."""
        ordered, order = rows.sort()
        buffer = torch.empty((len(rows), *self.row_shape), dtype=torch.uint8)
        if len(rows) == 0:
            return buffer
        view = memoryview(buffer.numpy()).cast("B")  # type: ignore[arg-type]  # an ndarray is a buffer
        breaks = (ordered[1:] != ordered[:-1] + 1).nonzero().flatten().add(1).tolist()
        with open(self.path, "rb", buffering=0) as f:
            for start, end in zip([0, *breaks], [*breaks, len(rows)], strict=True):
                f.seek(int(ordered[start]) * self.row_bytes)
                wanted = view[start * self.row_bytes : end * self.row_bytes]
                if f.readinto(wanted) != len(wanted):
                    raise CnnkitError(f"the decoded images in {self.path} are cut short; delete it and run again")
        out = torch.empty_like(buffer)
        out[order] = buffer
        return out


class MemoryRows:
    """Decoded images kept in memory: a tensor per part, filled in order (nothing stacked afterwards)."""

    def __init__(self, counts: dict[str, int], shape: tuple[int, int, int]):
        self.tensors = {part: torch.empty((n, *shape), dtype=torch.uint8) for part, n in counts.items()}
        self.filled = dict.fromkeys(counts, 0)

    def __enter__(self) -> MemoryRows:
        return self

    def __exit__(self, *failure) -> None:
        return None

    def add(self, part: str, pixels: torch.Tensor) -> None:
        self.tensors[part][self.filled[part]] = pixels
        self.filled[part] += 1

    def images(self, part: str) -> torch.Tensor:
        return self.tensors[part][: self.filled[part]]


class DiskRows:
    """Decoded images streamed into one file as they come, part after part: never all in memory. The file
    appears whole or not at all."""

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        # a partial file per process: the ranks of a torchrun run each decode, and each renames a whole file
        self.path, self.shape, self.partial = path, shape, path.with_suffix(f".partial-{os.getpid()}")
        self.count, self.ranges = 0, dict[str, tuple[int, int]]()

    def __enter__(self) -> DiskRows:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.partial, "wb")  # noqa: SIM115  # closed by __exit__
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.file.close()
        if error is None:
            self.partial.replace(self.path)
            return
        self.partial.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CnnkitError(
                f"could not write the decoded images to {self.path} ({error}); free some disk space there, set "
                "$CNNKIT_CACHE to a larger disk, or raise --memory-budget"
            ) from None

    def add(self, part: str, pixels: torch.Tensor) -> None:
        start, n = self.ranges.get(part, (self.count, 0))
        self.ranges[part] = (start, n + 1)
        self.file.write(pixels.contiguous().numpy().tobytes())
        self.count += 1

    def images(self, part: str) -> DiskImages:
        start, n = self.ranges.get(part, (0, 0))
        return DiskImages(self.path, self.count, self.shape, torch.arange(start, start + n))
