"""Rotation, zoom, colour jitter and random erasing of training batches: each does what it claims, per image,
leaves today's batches alone when off, and a stopped run with all of them on resumes bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_resume import Stop, StopAt, assert_identical

import cnnkit
from cnnkit.data.augment import Augment, Draws, erase_boxes, jitter_colours, rotate_and_zoom
from cnnkit.data.loader import DeviceBatches, mirror_where, random_translate
from cnnkit.data.preprocess import Preprocess
from cnnkit.data.sets import ImageSet
from cnnkit.training.checkpoint import load_checkpoint

ALL_ON = Augment(translate=2, flip=True, turns=True, rotate=20, scale=0.15, jitter=0.3, erase=0.5)


def colour_images(n: int, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def dots(n: int, size: int = 41, radius: int = 8) -> torch.Tensor:
    """A soft bright dot (a Gaussian blob: sampling moves its centroid only with it) `radius` pixels right of the
    centre of each image."""
    rows, cols = torch.meshgrid(torch.arange(size) - size // 2, torch.arange(size) - size // 2 - radius, indexing="ij")
    return (255 * torch.exp(-(rows**2 + cols**2) / 4.5)).expand(n, 1, size, size)


def dot_polar(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angle (degrees, counter-clockwise) and distance of each image's brightness centroid from its centre,
    within 16 pixels of it (further out, a zoomed-out image shows its mirrored border)."""
    size = images.shape[-1]
    rows = torch.arange(size).view(1, -1, 1) - size // 2
    cols = torch.arange(size).view(1, 1, -1) - size // 2
    inner = images[:, 0] * (rows**2 + cols**2 < 16**2)
    weights = inner / inner.sum((1, 2), keepdim=True)
    y, x = -(weights * rows).sum((1, 2)), (weights * cols).sum((1, 2))
    return torch.rad2deg(torch.atan2(y, x)), torch.hypot(x, y)


def test_right_angle_turns_turn_each_image_by_whole_quarters_each_as_often():
    images = colour_images(400)
    preprocess = Preprocess([0.0] * 3, [1 / 255] * 3)  # the pixels as they are
    batches = DeviceBatches(ImageSet(images, torch.arange(400)), 400, preprocess, augment=Augment(turns=True))
    ((turned, _),) = batches.iterate(None)

    def quarters(i: int) -> int:  # the one turn of the original image that the batch holds: no resampling
        return next(k for k in range(4) if torch.allclose(turned[i], images[i].rot90(k, (1, 2)).float(), atol=1e-3))

    assert np.bincount([quarters(i) for i in range(400)], minlength=4).min() > 70  # about 100 each


def test_all_off_gives_the_same_batches_and_draws_as_crop_and_flip_alone():
    images, labels = colour_images(300), torch.arange(300)
    preprocess = Preprocess([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    off = Augment(translate=2, flip=True, rotate=0.0, scale=0.0, jitter=0.0, erase=0.0)
    batches = DeviceBatches(ImageSet(images, labels), 64, preprocess, sampler="uniform", augment=off, seed=3)
    got = [x for epoch in (1, 2) for x, _ in batches.iterate(batches.new_order(), epoch=epoch)]
    generator = torch.Generator().manual_seed(3)  # the pipeline before augment.py, step by step
    mirror_first, expected = torch.rand(300, generator=generator) < 0.5, []
    for epoch in (1, 2):
        order = torch.randperm(300, generator=generator)
        for start in range(0, 256, 64):
            index = order[start : start + 64]
            moved = random_translate(images[index], 2, Draws(generator, 64))
            x = mirror_where(moved, mirror_first[index] ^ (epoch % 2 == 0))
            expected.append(preprocess(x))
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert torch.equal(batches.generator.get_state(), generator.get_state())  # no extra draws either


def test_every_augmentation_keeps_shape_dtype_and_layout_and_differs_per_image():
    same = colour_images(1, size=24).repeat(64, 1, 1, 1)
    preprocess = Preprocess([0.5] * 3, [0.25] * 3, torch.channels_last)
    for augment in (Augment(rotate=20), Augment(scale=0.2), Augment(jitter=0.3), Augment(erase=1.0), ALL_ON):
        batches = DeviceBatches(ImageSet(same, torch.arange(64)), 64, preprocess, sampler="uniform", augment=augment)
        x, labels = next(iter(batches))
        assert x.shape == (64, 3, 24, 24) and x.dtype == torch.float32 and len(labels) == 64
        assert x.is_contiguous(memory_format=torch.channels_last) and x.isfinite().all()
        assert len({tuple(image.flatten().tolist()) for image in x}) == 64, augment  # one image, 64 versions


def test_evaluation_batches_are_never_augmented():
    images = colour_images(100)
    preprocess = Preprocess([0.5] * 3, [0.25] * 3)
    plain = torch.cat([x for x, _ in DeviceBatches(ImageSet(images, torch.arange(100)), 32, preprocess)])
    assert torch.equal(plain, preprocess(images))


def test_rotation_by_a_quarter_turn_is_rot90_and_no_turn_changes_nothing():
    images = colour_images(2, size=9).float()
    turned = rotate_and_zoom(images, torch.tensor([90.0, -90.0]), torch.ones(2))
    assert torch.allclose(turned[0], torch.rot90(images[0], 1, (1, 2)), atol=1e-3)  # counter-clockwise
    assert torch.allclose(turned[1], torch.rot90(images[1], -1, (1, 2)), atol=1e-3)
    assert torch.allclose(rotate_and_zoom(images, torch.zeros(2), torch.ones(2)), images, atol=1e-3)


def test_zoom_above_one_magnifies_about_the_centre():
    ramp = torch.arange(16.0).expand(2, 1, 16, 16)  # each pixel holds its column
    zoomed = rotate_and_zoom(ramp, torch.zeros(2), torch.tensor([2.0, 0.5]))
    centre = 7.5
    assert torch.allclose(zoomed[0, 0, 5], centre + (torch.arange(16.0) - centre) / 2, atol=1e-4)  # in: half the slope
    assert torch.allclose(zoomed[1, 0, 5, 4:12], centre + (torch.arange(4.0, 12.0) - centre) * 2, atol=1e-4)  # out
    assert zoomed.min() >= 0 and zoomed.max() <= 15  # the border mirrors the image: no black, nothing new


def test_random_rotation_and_zoom_stay_in_their_ranges_per_image():
    augment, generator = Augment(rotate=30, scale=0.2), torch.Generator().manual_seed(0)
    angle, radius = dot_polar(augment.pixels(dots(400), Draws(generator, 400)))
    assert angle.abs().max() < 30.5 and angle.min() < -25 and angle.max() > 25  # each its own angle, all of them
    assert (radius / 8).min() > 0.79 and (radius / 8).max() < 1.21 and (radius / 8).min() < 0.85
    centre = augment.pixels(colour_images(50, size=9), Draws(generator, 50))[:, :, 4, 4]
    assert torch.allclose(centre, colour_images(50, size=9)[:, :, 4, 4].float(), atol=1e-3)  # the pivot stays


def test_jitter_changes_brightness_by_its_factor_and_keeps_grey_where_it_should():
    images = torch.randint(60, 140, (400, 3, 8, 8), generator=torch.Generator().manual_seed(1)).float()
    x = jitter_colours(images, torch.full((400,), 1.2), torch.ones(400), torch.ones(400))
    assert torch.allclose(x, images * 1.2, atol=1e-3)
    flat = jitter_colours(images, torch.ones(400), torch.zeros(400), torch.ones(400))
    assert (flat.amax((1, 2, 3)) - flat.amin((1, 2, 3)) < 1e-3).all()  # no contrast: each image one grey
    grey = jitter_colours(images, torch.ones(400), torch.ones(400), torch.zeros(400))
    assert (grey.amax(1) - grey.amin(1) < 1e-3).all() and not (images.amax(1) == images.amin(1)).all()
    one_channel = images[:, :1]
    assert torch.allclose(jitter_colours(one_channel, *torch.ones(2, 400), torch.zeros(400)), one_channel)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    jittered = Augment(jitter=0.4).pixels(images, Draws(torch.Generator().manual_seed(2), 400))
    ratio = (jittered * luma).sum(1).mean((1, 2)) / (images * luma).sum(1).mean((1, 2))  # contrast and saturation
    assert ratio.min() > 0.6 - 1e-4 and ratio.max() < 1.4 + 1e-4  # keep the mean grey: only brightness moves it
    assert ratio.min() < 0.65 and ratio.max() > 1.35 and len(ratio.unique()) == 400


def test_erasing_blanks_one_rectangle_of_2_to_33_percent_in_the_chosen_share():
    x = torch.ones(1000, 3, 64, 64)
    erased = Augment(erase=1.0).normalised(x.clone(), Draws(torch.Generator().manual_seed(0), 1000))
    zero = erased == 0
    assert torch.equal(zero.all(1), zero.any(1))  # every channel of the box
    zero = zero[:, 0]
    rows, cols = zero.any(2), zero.any(1)
    assert torch.equal(zero, rows[:, :, None] & cols[:, None, :])  # a rectangle
    area = zero.flatten(1).float().mean(1)
    assert area.min() > 0.017 and area.max() < 0.37 and area.min() < 0.03 and area.max() > 0.3
    aspect = rows.sum(1) / cols.sum(1)
    assert aspect.min() < 0.4 and aspect.max() > 2.5  # tall and wide boxes both
    half = Augment(erase=0.5).normalised(x.clone(), Draws(torch.Generator().manual_seed(0), 1000))
    assert 430 < (half == 0).flatten(1).any(1).sum() < 570
    assert torch.equal(Augment(erase=0.0).normalised(x.clone(), Draws(torch.Generator(), 1000)), x)


def test_erase_boxes_zeroes_exactly_the_given_box():
    x = torch.ones(2, 1, 6, 6)
    out = erase_boxes(x, torch.tensor([1, 0]), torch.tensor([2, 0]), torch.tensor([3, 0]), torch.tensor([2, 6]))
    expected = torch.ones(2, 1, 6, 6)
    expected[0, :, 1:4, 2:4] = 0
    assert torch.equal(out, expected)  # height 0: the image is left whole


def colour_folder(root, per_class: int = 40):
    from conftest import save_image

    rng = np.random.default_rng(0)
    for label, channel in (("red", 0), ("blue", 2)):
        for i in range(per_class):
            image = rng.integers(0, 90, (16, 16, 3), dtype=np.uint8)
            image[4 + i % 6 : 10 + i % 6, 3:12, channel] = 230
            save_image(root / label / f"{i}.png", image)
    return root


def test_a_stopped_run_with_every_augmentation_resumes_bit_identical(tmp_path):
    folder = colour_folder(tmp_path / "colours")
    settings = dict(data=str(folder), model="small-cnn", epochs=3, batch_size=8, checkpoint_every=3, seed=1)
    on = dict(translate=2, flip=True, rotate=20.0, scale=0.15, jitter=0.3, erase=0.5)
    reference = cnnkit.train(report=False, **settings, **on, out=str(tmp_path / "reference")).dir
    with pytest.raises(Stop):
        cnnkit.train(report=False, **settings, **on, out=str(tmp_path / "run"), callbacks=[StopAt(epoch=2, step=4)])
    position = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")["position"]
    assert (position["epoch"], position["step"]) == (2, 2)  # the last checkpoint is inside an epoch
    resumed = cnnkit.resume(tmp_path / "run").dir
    assert_identical(resumed, reference)  # final and best weights, and every epoch's metrics
    plain = cnnkit.train(report=False, **settings, translate=2, flip=True, out=str(tmp_path / "plain")).dir
    trained, untouched = (load_checkpoint(run / "checkpoint.safetensors")["model"] for run in (reference, plain))
    assert not all(torch.equal(trained[k], untouched[k]) for k in trained)  # the settings reached the batches
