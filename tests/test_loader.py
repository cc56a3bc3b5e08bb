"""On-device batching and augmentation: shapes kept, content moved as claimed, every image seen once."""

from __future__ import annotations

import torch

from cnnkit.data.augment import Augment, Draws
from cnnkit.data.loader import DeviceBatches, random_translate
from cnnkit.data.preprocess import Preprocess
from cnnkit.data.sets import ImageSet


def dot_images(n: int, size: int = 9) -> torch.Tensor:
    """One bright pixel in the centre of each image."""
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[:, :, size // 2, size // 2] = 255
    return images


def test_translate_moves_each_image_by_at_most_the_padding():
    images = dot_images(500)
    moved = random_translate(images, 2, Draws(torch.Generator().manual_seed(0), len(images)))
    assert moved.shape == images.shape and moved.dtype == torch.uint8
    where = moved.flatten(1).argmax(1)
    dy, dx = where // 9 - 4, where % 9 - 4
    assert dy.abs().max() == 2 and dx.abs().max() == 2  # shifted, but never further than the padding
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) == 25  # each image its own shift: all 5x5 offsets occur
    assert (moved.flatten(1).sum(1) == 255).all()  # the dot is never lost at this padding


def test_flip_alternates_each_image_between_epochs():
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(1000, 1, 1, 1)
    data = ImageSet(images, torch.arange(1000))
    train = DeviceBatches(data, 100, Preprocess([0.0], [1 / 255]), sampler="uniform", augment=Augment(flip=True))
    mirrored = []
    for epoch in (1, 2, 3):
        batches = list(train.iterate(train.new_order(), epoch=epoch))
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        is_mirror = (x == images[:1].flip(3).float()).flatten(1).all(1)
        assert (is_mirror ^ (x == images[:1].float()).flatten(1).all(1)).all()  # mirrored or untouched
        mirrored.append(torch.zeros(1000, dtype=torch.bool).index_put_((y,), is_mirror))
    assert 400 < mirrored[0].sum() < 600  # a random half first
    assert (mirrored[0] ^ mirrored[1]).all() and torch.equal(mirrored[0], mirrored[2])  # then the other half


def test_normalize_gives_zero_mean_unit_std():
    images = torch.randint(0, 256, (256, 3, 8, 8), dtype=torch.uint8)
    x = images.float() / 255
    mean, std = x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()
    out = Preprocess(mean, std)(images)
    assert out.dtype == torch.float32
    assert out.mean((0, 2, 3)).abs().max() < 1e-4 and (out.std((0, 2, 3)) - 1).abs().max() < 1e-2


def test_training_batches_shuffle_and_drop_the_partial_batch():
    data = ImageSet(torch.zeros(103, 1, 4, 4, dtype=torch.uint8), torch.arange(103))
    norm = Preprocess([0.0], [1.0])
    train = DeviceBatches(data, 10, norm, sampler="uniform", seed=0)
    labels = torch.cat([y for _, y in train])
    assert len(train) == 10 and len(labels) == 100 and len(set(labels.tolist())) == 100
    assert not torch.equal(labels, torch.arange(100))
    ordered = DeviceBatches(data, 10, norm)
    assert len(ordered) == 11 and torch.equal(torch.cat([y for _, y in ordered]), torch.arange(103))
