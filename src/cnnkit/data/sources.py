"""The named data sets: scikit-learn's embedded digits, and torchvision's MNIST, Fashion-MNIST, CIFAR-10/100.

Files already under the data folder are used as they are, with no network (MNIST's IDX files may be
gzip-compressed or not, whatever their checksum); only when they are missing does torchvision's own
download code run, and an offline machine gets one message saying which files to put where.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnkit.core.errors import CnnkitError
from cnnkit.data.sets import ImageSet, RawData

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

IDX_CLASSES = {  # torchvision's names for them, so that runs name them alike whoever read the files
    "MNIST": [f"{i} - {n}" for i, n in enumerate("zero one two three four five six seven eight nine".split())],
    "FashionMNIST": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}


def load_digits(data_dir: Path) -> RawData:
    """The 8x8 digits that ship inside scikit-learn: always there, no download, no official test split."""
    pixels, targets = read_digits()
    images = torch.from_numpy(np.clip(pixels * 16, 0, 255).astype(np.uint8)).unsqueeze(1)  # 0..16 -> 0..255
    labels = torch.from_numpy(targets.astype(np.int64))
    return RawData([str(i) for i in range(10)], {"all": ImageSet(images, labels)})


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: 8x8 images of 0..16, and their labels. Its CSV file is read where scikit-learn keeps
    it, without importing scikit-learn (about a second of a first run's seven); its loader if the file moved."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    where = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if where is not None and where.is_file():
        table = np.loadtxt(where, delimiter=",")  # a row an image: 64 pixels, then the label
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return digits.images, digits.target


def torchvision_set(name: str) -> Any:
    """torchvision's class for a data set, imported when one is loaded: importing torchvision takes seconds, which
    every other command (and a mistake's one-line message) would otherwise wait for."""
    import torchvision

    return getattr(torchvision.datasets, name)


def load_mnist_like(name: str):
    """A loader of `name`'s IDX files under data_dir/name/raw, read here: torchvision (seconds to import, which
    a --budget would pay) only downloads them."""

    def load(data_dir: Path) -> RawData:
        raw = data_dir / name / "raw"
        if not all(_find_idx(raw, file) for pair in IDX_FILES.values() for file in pair):
            wanted = [f"{raw}/{file}.gz" for pair in IDX_FILES.values() for file in pair]
            _download(torchvision_set(name), data_dir, wanted)
        parts = {
            part: ImageSet(_read_idx(raw, images).unsqueeze(1), _read_idx(raw, labels).long())
            for part, (images, labels) in IDX_FILES.items()
        }
        return RawData(IDX_CLASSES[name], parts)

    return load


def load_cifar(name: str):
    def load(data_dir: Path) -> RawData:
        dataset = torchvision_set(name)
        folder = data_dir / dataset.base_folder
        if not folder.is_dir():
            _download(dataset, data_dir, [f"{data_dir}/{dataset.filename} (or its unpacked folder {folder})"])
        try:  # torchvision checks every file's md5 before it unpickles the official batches
            splits = {part: dataset(str(data_dir), train=part == "train") for part in ("train", "test")}
        except RuntimeError as e:
            raise CnnkitError(
                f"{folder} is incomplete or corrupt ({e}); delete it and run again to download it"
            ) from None
        parts = {
            part: ImageSet(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))
            for part, ds in splits.items()
        }
        return RawData(list(splits["train"].classes), parts)

    return load


NAMED_SOURCES = {
    "digits": load_digits,
    "mnist": load_mnist_like("MNIST"),
    "fashion-mnist": load_mnist_like("FashionMNIST"),
    "cifar10": load_cifar("CIFAR10"),
    "cifar100": load_cifar("CIFAR100"),
}


def _download(dataset, data_dir: Path, wanted: list[str]) -> None:
    """torchvision's own download; offline, one message naming the files to put in place."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        dataset(str(data_dir), download=True)
    except Exception as e:  # urllib, socket and checksum errors all mean: the files are not here
        raise CnnkitError(
            f"{dataset.__name__} is not in {data_dir} and could not be downloaded ({_last_line(e)}). "
            "Put these files there, or pass --data-dir to the folder that holds them:",
            wanted,
        ) from None


def _find_idx(raw: Path, name: str) -> Path | None:
    return next((p for p in (raw / name, raw / f"{name}.gz") if p.is_file()), None)


def _read_idx(raw: Path, name: str) -> torch.Tensor:
    """An IDX file of unsigned bytes (MNIST's format): a magic number, the dimensions, then the data."""
    path = _find_idx(raw, name)
    assert path is not None  # the download made sure every file is there
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    if data[:3] != b"\x00\x00\x08" or not 1 <= ndim <= 3:
        raise CnnkitError(f"{path} is not an IDX file of unsigned bytes; delete it and run again to download it")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    pixels = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if pixels.size != int(np.prod(shape)):
        raise CnnkitError(f"{path} is truncated; delete it and run again to download it")
    return torch.from_numpy(pixels.reshape(shape).copy())


def _last_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[-1]
