"""Data loading on real data: digits, MNIST from ../shared/data, and image folders made on the spot."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_image, shape_image
from safetensors.torch import load_file

import cnnkit
from cnnkit import CnnkitError
from cnnkit.data import Reading, load_data
from cnnkit.data.images import decode_image
from cnnkit.data.ondisk import DiskImages, loaded
from cnnkit.data.sources import IDX_CLASSES, read_digits


def test_digits_are_embedded_and_split_stratified():
    data = load_data("digits", seed=0)
    sizes = {name: len(s) for name, s in data.splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.2 * 1797, abs=10)  # no official test split: 20% held out
    assert data.splits["train"].images.shape[1:] == (1, 8, 8) and data.splits["train"].images.dtype == torch.uint8
    for split in data.splits.values():  # every class in every split, in proportion
        counts = torch.bincount(split.labels, minlength=10).float()
        assert counts.min() / counts.max() > 0.8
    again = load_data("digits", seed=0)
    assert torch.equal(again.splits["test"].images, data.splits["test"].images)
    other = load_data("digits", seed=1)
    assert not torch.equal(other.splits["test"].labels, data.splits["test"].labels)


def test_digits_read_from_scikit_learns_file_are_its_loaders_digits():
    from sklearn.datasets import load_digits as sklearn_digits

    images, labels = read_digits()  # the file read directly: no scikit-learn import, about a second
    digits = sklearn_digits()
    assert np.array_equal(images, digits.images) and np.array_equal(labels, digits.target)


def test_mnist_from_recompressed_files_without_network(shared_data):
    data = load_data("mnist", data_dir=str(shared_data), val_fraction=0.1)
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [54000, 6000, 10000]
    assert data.splits["test"].images.shape == (10000, 1, 28, 28)
    assert data.mean[0] == pytest.approx(0.1307, abs=0.001) and data.std[0] == pytest.approx(0.3081, abs=0.001)
    assert data.classes[0] == "0 - zero"


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_idx_sets_name_their_classes_as_torchvision_does(name):
    import torchvision  # cnnkit reads the files without it, and must name the classes alike

    assert IDX_CLASSES[name] == getattr(torchvision.datasets, name).classes


def test_split_merges_and_resplits(shared_data):
    data = load_data("mnist", data_dir=str(shared_data), split="80/10/10")
    sizes = [len(data.splits[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 70000
    assert sizes == pytest.approx([56000, 7000, 7000], abs=10)  # rounded per class


def test_offline_without_files_says_where_to_put_them(tmp_path):
    with pytest.raises(CnnkitError) as e:
        load_data("fashion-mnist", data_dir=str(tmp_path))
    message = str(e.value)
    assert "could not be downloaded" in message
    assert str(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz") in message


def test_cifar_offline_without_files_names_the_archive(tmp_path):
    with pytest.raises(CnnkitError, match="cifar-10-python.tar.gz"):
        load_data("cifar10", data_dir=str(tmp_path))


def test_image_folder_mixed_formats_modes_and_sizes(image_folder):
    data = load_data(str(image_folder))
    assert data.classes == ["bar", "ring"]
    assert data.channels == 3  # some files are colour, so all become RGB
    assert data.image_size == 32  # the most common size; the 40x40 ones are resized
    assert sum(len(s) for s in data.splits.values()) == 120  # .txt, hidden files and hidden folders ignored
    assert data.skipped == []


def test_image_folder_with_train_and_test_subfolders(tmp_path):
    rng = np.random.default_rng(1)
    for part, n in (("train", 12), ("test", 4)):
        for label in ("a", "b"):
            for i in range(n):
                save_image(tmp_path / part / label / f"{i}.png", rng.integers(0, 255, (120, 160), dtype=np.uint8))
    data = load_data(str(tmp_path), val_fraction=0.25, image_size=16)
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [18, 6, 8]
    assert data.splits["test"].images.shape[1:] == (1, 16, 16)  # all grayscale: one channel; decoded on threads


def test_broken_images_stop_the_run_with_a_listing(image_folder):
    (image_folder / "bar" / "empty.png").write_bytes(b"")
    truncated = (image_folder / "ring" / "000.png").read_bytes()
    (image_folder / "ring" / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(CnnkitError) as e:
        load_data(str(image_folder))
    message = str(e.value)
    assert "2 image file(s) cannot be decoded" in message
    assert "empty.png" in message and "cut.png" in message and "--skip-bad-images" in message
    data = load_data(str(image_folder), reading=Reading(skip_bad_images=True))
    assert len(data.skipped) == 2
    assert sum(len(s) for s in data.splits.values()) == 120


def test_folder_cache_is_reused_and_renewed_when_files_change(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_CACHE", str(tmp_path / "cache"))
    first = load_data(str(image_folder))
    cached = list((tmp_path / "cache" / "folders").iterdir())
    assert len(cached) == 1
    again = load_data(str(image_folder))
    assert torch.equal(again.splits["train"].images, first.splits["train"].images)
    assert list((tmp_path / "cache" / "folders").iterdir()) == cached  # read back, not rebuilt
    for i, path in enumerate(sorted((image_folder / "bar").glob("*.png"))[:3]):
        shutil.copy(path, image_folder / "bar" / f"copy{i}.png")
    changed = load_data(str(image_folder))
    assert sum(len(s) for s in changed.splits.values()) == 123
    assert len(list((tmp_path / "cache" / "folders").iterdir())) == 2


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: (root / "only").mkdir(parents=True), "at least two"),
        (lambda root: root.mkdir(), "at least two"),
    ],
)
def test_folder_needs_two_classes(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    if (root / "only").is_dir():
        save_image(root / "only" / "1.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(CnnkitError, match=message):
        load_data(str(root))


def test_wrong_paths_and_names_are_explained(tmp_path):
    with pytest.raises(CnnkitError, match="does not exist"):
        load_data(str(tmp_path / "missing"))
    with pytest.raises(CnnkitError, match="unknown data set 'mnistt'.*digits, mnist"):
        load_data("mnistt")


def test_symlinks_leading_outside_the_data_folder_are_not_followed(image_folder, tmp_path, capsys):
    secret = save_image(tmp_path / "elsewhere" / "secret.png", np.zeros((32, 32), np.uint8))
    (image_folder / "bar" / "link-out.png").symlink_to(secret)
    (image_folder / "ring-out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (image_folder / "bar" / "link-in.png").symlink_to(next((image_folder / "ring").glob("*.png")))
    data = load_data(str(image_folder))
    assert data.classes == ["bar", "ring"]
    assert sum(len(s) for s in data.splits.values()) == 121  # the link inside the folder counts, the others not
    assert "ignored 2 symbolic link(s) that lead outside" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns; cnnkit then refuses
def test_a_decompression_bomb_is_refused_by_name(image_folder):
    from PIL import Image

    Image.new("L", (10000, 10000)).save(image_folder / "ring" / "huge.png")  # 100 megapixels
    with pytest.raises(CnnkitError, match=r"huge.png: 10000x10000 pixels is over the .*decompression bombs"):
        load_data(str(image_folder))
    assert (
        sum(len(s) for s in load_data(str(image_folder), reading=Reading(skip_bad_images=True)).splits.values()) == 120
    )


def test_a_corrupt_data_cache_is_rebuilt_not_trusted(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_CACHE", str(tmp_path / "cache"))
    first = load_data(str(image_folder))
    (cache_file,) = (tmp_path / "cache" / "folders").iterdir()
    cache_file.write_bytes(cache_file.read_bytes()[:1000])  # cut short, as by a crash or a full disk
    again = load_data(str(image_folder))
    assert torch.equal(again.splits["train"].images, first.splits["train"].images)
    assert cache_file.stat().st_size > 1000  # written anew


def test_cache_notices_a_changed_image_even_with_the_same_size_and_time(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_CACHE", str(tmp_path / "cache"))
    load_data(str(image_folder))
    target = sorted((image_folder / "bar").glob("*.bmp"))[0]  # BMP: same size whatever the pixels
    stat = target.stat()
    before = target.read_bytes()
    target.write_bytes(before[:-64] + bytes(255 - b for b in before[-64:]))  # change the last pixels
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and put the time back
    load_data(str(image_folder))
    assert len(list((tmp_path / "cache" / "folders").iterdir())) == 2  # decoded afresh, not the stale cache


def grey_folder(root: Path, modes: tuple[str, ...], ext: str = "png") -> Path:
    """Two classes of grey shapes, each file saved in the next of `modes` (grey pixels whatever the mode)."""
    from PIL import Image

    rng = np.random.default_rng(2)
    for label in ("bar", "ring"):
        for i in range(12):
            path = root / label / f"{i:02d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(shape_image(label, 24, rng)).convert(modes[i % len(modes)]).save(path)
    return root


def test_grey_pictures_saved_as_rgb_or_rgba_are_read_as_grey(tmp_path):
    from cnnkit.core.machine import pick_machine
    from cnnkit.settings.recipes import settle

    root = grey_folder(tmp_path / "grey", ("L", "RGB", "RGBA"))
    data = load_data(str(root))
    assert data.channels == 1 and data.channels_reason == "grey: every image's colour channels are equal"
    assert load_data(str(root)).channels_reason == data.channels_reason  # from the cache, too
    _, line = settle(cnnkit.TrainConfig(data=str(root)), data, pick_machine("cpu"), None)
    assert line.startswith("automatic recipe: ") and line.endswith("; grey: every image's colour channels are equal")
    assert load_data(str(grey_folder(tmp_path / "plain", ("L",)))).channels_reason == "grey: every file is greyscale"


def test_one_colourful_picture_makes_a_grey_folder_colour(tmp_path):
    root = grey_folder(tmp_path / "grey", ("L", "RGB", "RGBA"))
    colourful = np.zeros((24, 24, 3), np.uint8)
    colourful[..., 0] = 200  # red
    save_image(root / "ring" / "red.png", colourful)
    data = load_data(str(root))
    assert data.channels == 3 and data.channels_reason == f"colour: {root / 'ring' / 'red.png'} is in colour"
    every = torch.cat([part.images for part in data.splits.values()]).int()
    assert (every[:, 0] - every[:, 1]).amax() >= 200  # the red image keeps its colour


def test_a_grey_picture_saved_as_an_rgb_jpeg_counts_as_grey(tmp_path):
    from PIL import Image

    from cnnkit.data.images import has_colour

    root = grey_folder(tmp_path / "jpegs", ("RGB",), "jpg")
    with Image.open(root / "bar" / "00.jpg") as img:
        assert img.mode == "RGB"
    assert load_data(str(root)).channels == 1
    tinted = np.stack([np.full((24, 24), 120, np.uint8)] * 3, axis=-1) + np.array([0, 0, 12], np.uint8)
    assert has_colour(save_image(tmp_path / "tinted.jpg", tinted))  # a faint blue is colour, not rounding


def test_one_grey_conversion_for_files_and_for_tensors(tmp_path):
    from PIL import Image

    from cnnkit.data.images import to_channels

    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    path = save_image(tmp_path / "colour.png", rgb)
    as_tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    pil_grey = torch.from_numpy(np.array(Image.fromarray(rgb).convert("L")))
    assert torch.equal(to_channels(as_tensor, 1)[0, 0], pil_grey)  # PIL's own luma, bit for bit
    assert torch.equal(decode_image(path, 16, 1), to_channels(decode_image(path, 16, 3)[None], 1)[0])
    assert torch.equal(to_channels(pil_grey[None, None], 3)[0], pil_grey.expand(3, -1, -1))


def test_wide_pixel_formats_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    expected = torch.from_numpy((ramp * 255).round().astype(np.uint8))
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "16bit.png")  # mode I;16
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "float.tif")  # mode F, 0..1
    Image.fromarray((ramp * 255).astype(np.float32)).save(tmp_path / "float255.tif")  # mode F, 0..255
    Image.fromarray((ramp * 65535).astype(np.int32)).save(tmp_path / "32bit.tif")  # mode I
    for name in ("16bit.png", "float.tif", "float255.tif", "32bit.tif"):
        decoded = decode_image(tmp_path / name, 32, 1)[0].int()
        assert (decoded - expected.int()).abs().max() <= 1, name


def test_a_split_of_blank_images_is_flagged(tmp_path, capsys):
    for label in ("a", "b"):
        for i in range(10):
            save_image(tmp_path / "blank" / label / f"{i}.png", np.full((8, 8), 7, np.uint8))
    load_data(str(tmp_path / "blank"))
    assert "warning: the train images of" in capsys.readouterr().out
    load_data("digits")
    assert "warning" not in capsys.readouterr().out


def make_layout(root, parts: dict[str, int], classes=("a", "b")):
    rng = np.random.default_rng(0)
    for part, n in parts.items():
        for label in classes:
            for i in range(n):
                save_image(root / part / label / f"{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    return root


@pytest.mark.parametrize(
    "parts, sizes",
    [
        ({"train": 10, "test": 5}, (18, 2, 10)),  # val carved from train
        ({"train": 10, "val": 5}, (16, 10, 4)),  # test carved from train, the folder's val kept
        ({"Training": 10, "Validation": 5, "Testing": 5}, (20, 10, 10)),  # aliases, any case
        ({"train": 10}, (14, 2, 4)),  # train alone: as a plain class folder
    ],
)
def test_every_split_layout_is_recognised(tmp_path, parts, sizes):
    data = load_data(str(make_layout(tmp_path / "data", parts)), val_fraction=0.1)
    assert data.classes == ["a", "b"]  # never "train" and "val" as classes
    assert tuple(len(data.splits[s]) for s in ("train", "val", "test")) == sizes


@pytest.mark.parametrize(
    "parts, message",
    [
        ({"train": 3, "cat": 3}, r"mixes split folders \(train\) with other folders \(cat\)"),
        ({"train": 3, "val": 3, "valid": 3}, "has two folders for the val split"),
        ({"val": 3, "test": 3}, "no train folder"),
    ],
)
def test_ambiguous_layouts_are_refused(tmp_path, parts, message):
    with pytest.raises(CnnkitError, match=message):
        load_data(str(make_layout(tmp_path / "data", parts)))


def test_a_split_folder_that_links_outside_is_not_followed(tmp_path, capsys):
    make_layout(tmp_path / "elsewhere", {"train": 4})
    root = make_layout(tmp_path / "data", {"test": 2})
    (root / "train").symlink_to(tmp_path / "elsewhere" / "train", target_is_directory=True)
    with pytest.raises(CnnkitError, match="no train folder"):
        load_data(str(root))
    assert "ignored 1 symbolic link(s) that lead outside" in capsys.readouterr().out


@pytest.mark.timeout(60)  # a FIFO opened for reading would wait here forever
def test_special_files_are_passed_over_without_opening_them(image_folder, capsys):
    os.mkfifo(image_folder / "bar" / "pipe.png")
    (image_folder / "ring" / "dangling.png").symlink_to(image_folder / "nowhere.png")
    data = load_data(str(image_folder), reading=Reading(skip_bad_images=False))
    assert sum(len(s) for s in data.splits.values()) == 120
    assert "ignored 2 image name(s) that are not regular files" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_a_training_run_says_once_what_it_left_out_of_the_folder(image_folder, tmp_path, capsys):
    os.mkfifo(image_folder / "bar" / "pipe.png")
    cnnkit.train(data=str(image_folder), epochs=1, report=False, out=str(tmp_path / "run"))
    assert capsys.readouterr().out.count("that are not regular files") == 1  # not once per read of the folder


def test_dot_named_class_folders_are_left_out_with_a_word(image_folder, capsys):
    for name in ("..a", "..."):
        shutil.copytree(image_folder / "bar", image_folder / name)
    data = load_data(str(image_folder))
    assert data.classes == ["bar", "ring"]
    said = capsys.readouterr().out
    assert "ignored 3 folder(s) of images whose names start with a dot" in said  # with .thumbnails
    assert "rename them to train on them as classes" in said


def test_pictures_in_two_classes_or_in_train_and_test_are_reported(image_folder, capsys):
    (image_folder / "bar2").symlink_to(image_folder / "bar", target_is_directory=True)  # inside: followed
    for photo in sorted((image_folder / "ring").glob("0*"))[:10]:  # the same photos saved twice
        shutil.copy(photo, photo.with_name(f"copy-{photo.name}"))
    capsys.readouterr()
    data = load_data(str(image_folder), seed=1)
    said = capsys.readouterr().out
    assert data.classes == ["bar", "bar2", "ring"]
    assert "60 picture(s) are in two classes, pixel for pixel (60 in both bar and bar2" in said
    assert re.search(r"warning: \d+ of the test images .*are also training images, pixel for pixel", said)
    load_data(str(image_folder), seed=1, reading=Reading(listed=False))  # a second read of the same run
    assert "pixel for pixel" not in capsys.readouterr().out  # said once, on the first read


def test_names_that_are_not_utf8_or_hold_escape_codes_are_handled_and_printed_safely(tmp_path, capsys):
    from cnnkit.core.progress import say

    root = tmp_path / "odd"
    rng = np.random.default_rng(0)
    for name in (b"caf\xe9", b"evil\x1b[31m"):  # Latin-1 bytes, and a terminal colour code
        folder = os.path.join(os.fsencode(root), name)
        os.makedirs(folder)
        for i in range(6):
            save_image(Path(os.fsdecode(folder)) / f"{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    data = load_data(str(root))
    assert data.classes == [os.fsdecode(b"caf\xe9"), "evil\x1b[31m"]
    say(f"classes: {', '.join(data.classes)}")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31m" in out and "caf\\udce9" in out


@pytest.mark.parametrize("ext", ["png", "jpg"])  # PIL's path and libjpeg-turbo's
def test_resize_rules_make_a_wide_image_square_each_its_own_way(tmp_path, ext):
    wide = np.full((20, 40, 3), 128, np.uint8)
    wide[:, :8] = 255  # a white band along the left edge
    path = save_image(tmp_path / f"wide.{ext}", wide)
    squash, crop, pad = (decode_image(path, 20, 3, rule) for rule in ("squash", "crop", "pad"))
    assert squash[:, :, 0].float().mean() > 230  # stretched: the band is still there, narrower
    assert crop.float().max() < 170  # the centre square: the band is cut off
    assert pad[:, :4].float().mean() < 15 and pad[:, :, 0].float().mean() > 120  # black above, band kept
    assert 110 < pad[:, 10, 10].float().mean() < 145


def test_a_runs_resize_rule_is_kept_for_eval_and_predict(image_folder, tmp_path):
    run = cnnkit.train(
        report=False, data=str(image_folder), model="small-cnn", epochs=1, resize="pad", out=str(tmp_path / "r")
    )
    loaded = cnnkit.load(run.dir)
    assert (run.info.resize, loaded.info.resize, loaded.config.resize) == ("pad", "pad", "pad")
    wide = save_image(tmp_path / "wide.png", shape_image("bar", 32, np.random.default_rng(0))[:16])
    pixels = loaded._read_image(wide)
    assert pixels.shape[1:] == (32, 32) and int(pixels[:, :6].max()) == 0  # padded, not stretched
    with pytest.raises(CnnkitError, match="--resize fit must be one of squash, crop, pad"):
        cnnkit.train(report=False, data=str(image_folder), resize="fit")


def test_a_folder_past_the_memory_budget_stays_on_disk_and_trains_alike(image_folder, tmp_path):
    settings = {"data": str(image_folder), "model": "small-cnn", "epochs": 2}
    reference = load_data(str(image_folder)).splits["train"].images
    assert isinstance(reference, torch.Tensor)
    in_memory = cnnkit.train(report=False, **settings, out=str(tmp_path / "memory"))
    on_disk = cnnkit.train(
        report=False, **settings, memory_budget=1e-5, out=str(tmp_path / "disk")
    )  # 10 KiB: far too little
    weights = [load_file(str(run.dir / "weights.safetensors")) for run in (in_memory, on_disk)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the same pixels, batch for batch
    assert in_memory.info.data == on_disk.info.data
    assert in_memory.evaluate()["test_accuracy"] == on_disk.evaluate()["test_accuracy"]
    data = load_data(str(image_folder), reading=Reading(memory_budget=10_000))  # from the cache on disk now
    images = data.splits["train"].images
    assert isinstance(images, DiskImages) and images.path.stat().st_size == images.count * 3 * 32 * 32
    assert torch.equal(loaded(images), reference)
    index = torch.tensor([5, 3, 4, 3, 80])  # unsorted, repeated, with neighbours: read in three runs
    assert torch.equal(images[index], reference[index])


def test_a_jpeg_at_its_size_decodes_as_pil_decodes_it(tmp_path):
    from PIL import Image

    from cnnkit.data.images import image_to_tensor

    rng = np.random.default_rng(0)
    colour = (np.mgrid[0:32, 0:32, 0:3].sum(0) * 4 + rng.integers(0, 40, (32, 32, 3))).clip(0, 255).astype(np.uint8)
    for name, array in (("colour", colour), ("grey", colour[..., 0])):
        path = save_image(tmp_path / f"{name}.jpg", array)
        for channels in (1, 3):
            with Image.open(path) as img:
                through_pil = image_to_tensor(img, 32, channels)
            assert torch.equal(decode_image(path, 32, channels), through_pil), (name, channels)
