"""Batches cut from whole tensors that live on the training device, augmented there as whole batches.

No DataLoader, no worker processes, no PIL, no per-sample Python: one gather, one normalise and one
vectorised crop/flip per batch (and, when asked, rotation, zoom, jitter and erasing: augment.py). That is
most of the speed-up over the tutorials' input pipeline.

With several processes, every one draws the same global order from the same seed and takes its contiguous
share of each global batch, so together they train on exactly the batches one process would.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cnnkit.core.machine import share_rows
from cnnkit.data.augment import Augment, Draws, quarter_turns
from cnnkit.data.preprocess import Preprocess
from cnnkit.data.sets import ImageSet

NO_AUGMENT = Augment()  # evaluation batches, and training without augmentation
SAMPLERS = ("uniform", "balanced")  # each image once a pass; or each class as often, images drawn with replacement


def random_translate(images: torch.Tensor, pad: int, draws: Draws) -> torch.Tensor:
    """Random crop with mirrored borders, a different shift per image, picked from a view of every crop of the
    padded batch: a CPU copies whole rows that way, 3x faster than a gather of single pixels."""
    if pad == 0:
        return images
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")  # no black edges to learn
    dy, dx = draws.integers(2 * pad + 1, 2)  # each (n,)
    crops = padded.unfold(2, h, 1).unfold(3, w, 1)  # (n, c, shifts down, shifts across, h, w), no copy
    return crops[torch.arange(n, device=images.device), :, dy, dx]


def mirror_where(images: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    return torch.where(mirror.view(-1, 1, 1, 1), images.flip(3), images)


class DeviceBatches:
    """Shuffled, augmented, normalised training batches, or plain ordered batches for evaluation."""

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        preprocess: Preprocess,
        *,
        sampler: str | None = None,
        augment: Augment = NO_AUGMENT,
        seed: int = 0,
        share: tuple[int, int] = (0, 1),
    ):
        """Batches on the device that `preprocess` lives on; for training, a `sampler` (one of SAMPLERS: None
        keeps the stored order) and `augment`; `share`: (this process, processes), each taking its share of
        every global batch of `batch_size`."""
        device = preprocess.scale.device
        self.rank, self.processes = share
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size, self.preprocess, self.sampler, self.augment = batch_size, preprocess, sampler, augment
        self.generator = torch.Generator(device=device).manual_seed(seed)
        # alternating flip (airbench): each image is mirrored in every other epoch, a random half first, so
        # two epochs show every image both ways instead of each way by chance; it trains faster than coin flips
        n = len(self.labels)
        self.mirror_first = torch.rand(n, device=device, generator=self.generator) < 0.5 if augment.flip else None

    def _stop(self) -> int:
        """Training drops the last partial batch: a batch of one breaks batch norm and a tiny one is noise."""
        n = len(self.labels)
        return n - n % self.batch_size if self.sampler and n >= self.batch_size else n

    def __len__(self) -> int:
        return -(-self._stop() // self.batch_size)

    def new_order(self) -> torch.Tensor | None:
        """The next epoch's shuffled order (None: in stored order)."""
        n = len(self.labels)
        if self.sampler is None:
            return None
        if self.sampler == "balanced":  # an image of a class of k images is drawn with weight 1/k: classes alike
            weights = (1 / torch.bincount(self.labels).float())[self.labels]
            return torch.multinomial(weights, n, replacement=True, generator=self.generator)
        return torch.randperm(n, device=self.labels.device, generator=self.generator)

    def iterate(
        self, order: torch.Tensor | None, start_step: int = 0, epoch: int = 1, stop_step: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch `epoch`'s batches in `order` from batch `start_step` on (a resumed epoch picks up exactly
        where it stopped), up to batch `stop_step` (a run planned in steps may end inside a pass)."""
        stop = self._stop() if stop_step is None else min(self._stop(), stop_step * self.batch_size)
        augment = self.augment
        for start in range(start_step * self.batch_size, stop, self.batch_size):
            end = min(start + self.batch_size, stop)
            mine = share_rows(end - start, self.rank, self.processes)  # this process's rows of the global batch
            draws = Draws(self.generator, end - start, mine)
            rows = slice(start + mine.start, start + mine.stop)
            index = rows if order is None else order[rows]
            images, labels = self.images[index], self.labels[index]
            images = random_translate(images, augment.translate, draws) if augment.translate else images
            if self.mirror_first is not None:
                images = mirror_where(images, self.mirror_first[index] ^ (epoch % 2 == 0))
            images = quarter_turns(images, draws.integers(4)) if augment.turns else images
            images = augment.pixels(images, draws)  # rotation, zoom, jitter: off leaves it as it was
            yield augment.normalised(self.preprocess(images), draws), labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(self.new_order())
