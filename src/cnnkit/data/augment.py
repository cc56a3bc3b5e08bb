"""Per-image augmentation of whole training batches on the device: rotation and zoom, colour jitter, erasing.

Each image gets its own random parameters, drawn as one tensor per batch from the batches' generator (so a
checkpoint that stores that generator resumes bit for bit); no per-image Python. The draws are separated
from the transforms, which are plain functions of their parameters. With several processes, each draws for
the whole global batch and keeps its own rows (`Draws`), so every image is augmented as one process would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ERASE_AREA = (0.02, 0.33)  # RandomErasing's defaults: a share of the image ...
ERASE_ASPECT = (0.3, 1 / 0.3)  # ... in a box neither too thin nor too flat
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 grey, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class Draws:
    """Random numbers for a global batch of `total` images, of which this process keeps `rows`: every process
    advances the generator alike, so the next batch's draws agree too."""

    generator: torch.Generator
    total: int
    rows: slice = field(default_factory=lambda: slice(None))  # one process: all of them

    def uniform(self, *leading: int) -> torch.Tensor:
        """Uniform in [0, 1), of shape (*leading, this process's images)."""
        shape = (*leading, self.total)
        return torch.rand(shape, device=self.generator.device, generator=self.generator)[..., self.rows]

    def integers(self, high: int, *leading: int) -> torch.Tensor:
        """Whole numbers in [0, high), likewise."""
        shape = (*leading, self.total)
        return torch.randint(0, high, shape, device=self.generator.device, generator=self.generator)[..., self.rows]

    def signed(self, *leading: int) -> torch.Tensor:
        """Uniform in [-1, 1), likewise."""
        return self.uniform(*leading) * 2 - 1


@dataclass(frozen=True)
class Augment:
    """The training batches' augmentation: crop padding, alternating flips, right-angle turns, rotation (max
    degrees), zoom (max fraction in or out), colour jitter (max fraction) and the chance per image of an erased
    rectangle."""

    translate: int = 0
    flip: bool = False
    turns: bool = False
    rotate: float = 0.0
    scale: float = 0.0
    jitter: float = 0.0
    erase: float = 0.0

    def pixels(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Rotation, zoom and jitter, in pixel space (0 to 255, before normalising); untouched when all are off."""
        if not (self.rotate or self.scale or self.jitter):
            return images
        # resampling and blending need floats, kept unrounded (preprocess takes floats too) and contiguous
        x = images.to(torch.float32, memory_format=torch.contiguous_format)
        if self.rotate or self.scale:
            u = draws.signed(2)
            x = rotate_and_zoom(x, self.rotate * u[0], 1 + self.scale * u[1])
        if self.jitter:
            x = jitter_colours(x, *(1 + self.jitter * draws.signed(3)))
        return x

    def normalised(self, x: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Random erasing, after normalising: the erased box holds 0, the data's mean, in place."""
        if not self.erase:
            return x
        return erase_boxes(x, *draw_boxes(x.shape, self.erase, draws))


def quarter_turns(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Turn each square image by its number of quarter turns (0 to 3, counter-clockwise, as torch.rot90): exact,
    no resampling, so a hairline stays a hairline."""
    turned = images
    for k in (1, 2, 3):
        turned = torch.where((turns == k).view(-1, 1, 1, 1), images.rot90(k, (2, 3)), turned)
    return turned


def rotate_and_zoom(images: torch.Tensor, degrees: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its `degrees` (counter-clockwise, as torch.rot90) and magnify it by its `zoom`
    (above 1: in) about its centre, as one bilinear resampling of the batch; mirrored borders, so no black
    corners are learned."""
    n, _, h, w = images.shape
    radians = degrees * (math.pi / 180)
    cos, sin = torch.cos(radians) / zoom, torch.sin(radians) / zoom
    zero = torch.zeros_like(cos)
    # the output-to-input map in affine_grid's [-1, 1] coordinates; h/w and w/h keep non-square images unsheared
    theta = torch.stack([cos, -sin * (h / w), zero, sin * (w / h), cos, zero], 1).view(n, 2, 3)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def jitter_colours(
    images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor
) -> torch.Tensor:
    """ColorJitter's brightness, contrast and saturation (colour images only) by per-image factors, in that
    order, on 0-255 floats. All three are linear in the pixels, so together they are one colour
    matrix and offset per image: a single pass over the batch, clamped once at the end."""
    n, channels = images.shape[:2]
    grey = torch.tensor(LUMA if channels == 3 else [1 / channels] * channels, device=images.device)
    mean_grey = images.mean((2, 3)) @ grey  # what contrast pulls towards or pushes away from
    mix = torch.eye(channels, device=images.device).expand(n, channels, channels)
    if channels == 3:  # saturation: towards or away from each pixel's grey (grey has weights summing to 1)
        s = saturation.view(n, 1, 1)
        mix = s * mix + (1 - s) * grey.view(1, 1, 3)
    matrix = (brightness * contrast).view(n, 1, 1) * mix
    offset = ((1 - contrast) * brightness * mean_grey).view(n, 1, 1)
    return torch.baddbmm(offset, matrix, images.reshape(n, channels, -1)).view(images.shape).clamp_(0, 255)


def draw_boxes(shape: torch.Size, chance: float, draws: Draws) -> tuple[torch.Tensor, ...]:
    """RandomErasing's rectangles, one per image (height 0 where the image is left whole): area a share of
    ERASE_AREA and aspect in ERASE_ASPECT, log-uniform, narrowed so that the box always fits (no retries)."""
    h, w = shape[-2:]
    erased, area, aspect, top, left = draws.uniform(5)
    area = ERASE_AREA[0] + area * (ERASE_AREA[1] - ERASE_AREA[0])
    low = torch.clamp(area.log(), min=math.log(ERASE_ASPECT[0]))  # a box taller than the image cannot fit ...
    high = torch.clamp(-area.log(), max=math.log(ERASE_ASPECT[1]))  # ... nor one wider
    aspect = torch.exp(low + aspect * (high - low))
    height = (h * (area * aspect).sqrt()).round().clamp(1, h).long() * (erased < chance)
    width = (w * (area / aspect).sqrt()).round().clamp(1, w).long()
    top = (top * (h - height + 1)).long()
    left = (left * (w - width + 1)).long()
    return top, left, height, width


def erase_boxes(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor
) -> torch.Tensor:
    """Zero the box [top, top + height) x [left, left + width) of each image, in place, with one mask."""
    _, _, h, w = x.shape
    rows = torch.arange(h, device=x.device) - top.view(-1, 1)
    cols = torch.arange(w, device=x.device) - left.view(-1, 1)
    inside_rows = (rows >= 0) & (rows < height.view(-1, 1))
    inside_cols = (cols >= 0) & (cols < width.view(-1, 1))
    return x.masked_fill_((inside_rows[:, :, None] & inside_cols[:, None, :]).unsqueeze(1), 0)
