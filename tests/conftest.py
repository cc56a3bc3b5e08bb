"""Shared fixtures: real data only (scikit-learn's digits, MNIST and CIFAR-10 from ../shared/data,
small image folders made here), and no network: any connection attempt fails at once."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Every test run gets a fresh cnnkit cache, so no test leans on a cache another run left behind; removed at exit
# (each worker's holds about 200 MB of decoded images).
os.environ["CNNKIT_CACHE"] = tempfile.mkdtemp(prefix="cnnkit-test-cache-")
atexit.register(shutil.rmtree, os.environ["CNNKIT_CACHE"], ignore_errors=True)

# Under pytest-xdist (`-n auto`, as `pytest` runs) the workers share the cores: each trains, and starts the
# processes it tests, on its share of them. On 2 cores, 2 workers of a thread each run the suite in about 0.55x
# the time 1 worker of 2 threads takes (small nets use a second thread poorly; imports and decoding not at all).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, share)))


def pytest_collection_modifyitems(items):
    """A test that reads ../shared/data says so by its marker: `pytest -m "not needs_shared_data"` runs the rest."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_shared_data)


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never download: a connection anywhere but this machine (the served tests' loopback) raises, as on a
    machine that is offline."""
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def only_here(address) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host not in LOOPBACK:
            raise OSError("network disabled in tests")

    def refused_connect(self, address):
        only_here(address)
        return connect(self, address)

    def refused_getaddrinfo(host, *args, **kwargs):
        only_here(host)
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", refused_connect)
    monkeypatch.setattr(socket, "getaddrinfo", refused_getaddrinfo)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"the project's test data is not at {SHARED_DATA}")
    return SHARED_DATA


def save_image(path: Path, array: np.ndarray, mode: str | None = None, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format=fmt)
    return path


def shape_image(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A grayscale picture of a class: 'bar' a vertical stripe, 'ring' a ring, with noise and a random shift."""
    y, x = np.mgrid[0:size, 0:size] - size / 2 + rng.integers(-2, 3, size=2)[:, None, None]
    if kind == "bar":
        img = (np.abs(x) < size / 8) * 200.0
    else:
        img = (np.abs(np.hypot(x, y) - size / 3) < size / 10) * 200.0
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two classes of real image files in mixed formats, modes and sizes, some in colour, plus files that must be
    ignored."""
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    formats = [("png", "L"), ("jpg", "RGB"), ("bmp", "RGB"), ("webp", "RGB"), ("png", "RGBA"), ("png", "P")]
    for label in ("bar", "ring"):
        for i in range(60):
            ext, mode = formats[i % len(formats)]
            size = 32 if i % 5 else 40  # mostly 32x32: the folder's most common size
            img = Image.fromarray(shape_image(label, size, rng))
            if mode in ("RGB", "RGBA"):  # tinted, so the folder is in colour: grey pixels count as grey in any mode
                img = Image.merge("RGB", (img, img, img.point(lambda v: v // 2)))
            img = img.convert(mode)
            path = root / label / f"{i:03d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
    (root / "bar" / "notes.txt").write_text("not an image")
    (root / "ring" / ".hidden.png").write_bytes(b"")
    (root / ".thumbnails").mkdir()
    save_image(root / ".thumbnails" / "x.png", np.zeros((8, 8), np.uint8))
    return root
