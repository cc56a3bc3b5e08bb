"""One image file -> one uint8 tensor. Training data and `predict` both go through `decode_image`,
so an image is preprocessed the same way whether it was seen in training or handed in later."""

from __future__ import annotations

import functools
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
IMAGE_FORMATS = "PNG, JPEG, BMP, WebP, GIF or TIFF"  # what IMAGE_EXTENSIONS name, in words
WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})  # more than 8 bits per pixel
GRAY_MODES = frozenset({"1", "L", "LA"}) | WIDE_GRAY_MODES
GREY_TOLERANCE = 4  # levels of 255: JPEG's colour conversion may round a grey pixel's channels a level or two apart
# how a non-square image becomes square; squash (the default) keeps every pixel in view, at the cost of
# stretching: an object near the border is never cut off, and train and predict stretch alike
RESIZE_RULES = ("squash", "crop", "pad")
EXIF_ORIENTATION = 0x0112  # the EXIF tag of how the camera was held
LUMA_WEIGHTS = (19595, 38470, 7471)  # PIL's RGB -> L weights, in 1/65536: 0.299 R + 0.587 G + 0.114 B
# torchvision 0.29 warns on every decode that TorchCodec will take over image decoding; until it does, its
# libjpeg-turbo decoder is the fastest at hand (and PIL takes over where it is gone)
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)


@functools.cache
def jpeg_decoder() -> Callable[..., torch.Tensor] | None:
    """torchvision's libjpeg-turbo decoder, imported at the first JPEG (importing torchvision takes seconds,
    which every command would otherwise wait for); None where torchvision has no image codecs: PIL decodes all."""
    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    return decode_jpeg


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def open_image(path: str | Path | io.BytesIO, max_pixels: int | None = None, size: int | None = None) -> Image.Image:
    """Open an image lazily, refusing one past `max_pixels` (default PIL's decompression-bomb limit) from its
    header alone (PIL itself only warns between one and two times the limit). A JPEG past it is first set to
    decode at a reduced scale (its DCT's 1/2 to 1/8, no smaller than `size`), which needs a fraction of the memory."""
    try:
        img = Image.open(path)
    except UnidentifiedImageError:  # PIL's own message names the Python object it read from, not the file
        raise UnidentifiedImageError(f"not a {IMAGE_FORMATS} file") from None
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    if limit and size and img.width * img.height > limit and img.format == "JPEG":
        img.draft(img.mode, (size, size))
    width, height = img.size
    if limit and width * height > limit:
        img.close()
        raise Image.DecompressionBombError(
            f"{width}x{height} pixels is over the {limit:,}-pixel limit that guards against decompression bombs; "
            "shrink the image"
        )
    return img


def peek_image(path: str | Path) -> tuple[tuple[int, int], bool]:
    """(width, height) and whether the image is grayscale, read from the header only. (A folder's JPEGs have
    theirs read on the way by its cache hash, with `jpeg_header`.)"""
    with open_image(path) as img:
        return img.size, img.mode in GRAY_MODES


def has_colour(path: str | Path) -> bool:
    """Whether some pixel's red, green and blue differ by more than GREY_TOLERANCE (alpha aside): grey pictures
    are often saved as RGB or RGBA, so the pixels say what an image is, not its file's mode. A JPEG is read at
    an eighth of its side, which costs a fraction of a full decode."""
    with open_image(path) as img:
        img.draft("RGB", (1, 1))  # a JPEG's smallest DCT scale (its 8x8 blocks' means); other formats ignore it
        rgb = np.asarray(img.convert("RGBA"))[..., :3]  # by RGBA: PIL warns on a palette's transparency to RGB
    return int(np.ptp(rgb, axis=2).max()) > GREY_TOLERANCE


def detail_kept(images: torch.Tensor, size: int) -> float:
    """The share of uint8 `images`' variation (about each image's mean brightness, over their channels' mean)
    that survives shrinking them to `size` and enlarging them back: what a net trained at that size can still
    see. Photos enlarged from small ones keep nearly all of it; fine lines, spots and texture do not."""
    pixels = images.float().mean(1, keepdim=True)
    side = pixels.shape[-1]
    small = F.interpolate(pixels, size=size, mode="bilinear", antialias=True)
    back = F.interpolate(small, size=side, mode="bilinear", antialias=False)
    spread = (pixels - pixels.mean((2, 3), keepdim=True)).square().mean().item()
    return 1.0 - (pixels - back).square().mean().item() / spread if spread else 1.0


TURN_LEAST = 40  # a class's images a turn's effect is measured on, at least: two halves of 20


def turn_kept(images: torch.Tensor, labels: torch.Tensor) -> float | None:
    """How much of what each class's uint8 `images` share survives a right-angle turn: the least, over the
    classes and over a quarter, half and three-quarter turn, of two likenesses, each between one half of a
    class's images and the other half, turned, as a share of their likeness unturned. One is of the mean picture's
    spectrum (where the class has a mean picture: a glyph's strokes, a photograph's sky; its spectrum, so that
    where the picture lies does not count), the other of the mean spectrum (the directions of the class's texture:
    a brushed grain). 1.0: a turn changes nothing a class's images share, as for micrographs. Classes with fewer
    than TURN_LEAST images are not measured (None when none is)."""
    pixels = images.float().mean(1)
    pixels = pixels - pixels.mean((1, 2), keepdim=True)
    kept = []
    for c in labels.unique():
        mine = pixels[labels == c]
        if len(mine) >= TURN_LEAST:
            first, second = mine[0::2], mine[1::2]
            # the picture's spectrum weighs where its strength is; the texture's, every frequency (a faint grain)
            pictures = _spectra(first.mean(0), log=False), _spectra(second.mean(0), log=False)
            textures = _spectra(first, log=True).mean(0), _spectra(second, log=True).mean(0)
            kept += [_turned(*pictures, shared=0.7), _turned(*textures, shared=0.0)]
    return min(kept, default=None)


def _spectra(fields: torch.Tensor, log: bool) -> torch.Tensor:
    """Each (H, W) field's amplitude spectrum (or log power spectrum: every frequency alike), its zero frequency
    at the centre of an odd side (so that a turn about the centre turns the spectrum)."""
    spectra = torch.fft.fftshift(torch.fft.fft2(fields), dim=(-2, -1)).abs()
    spectra = spectra.square().log1p() if log else spectra
    return spectra[..., 1:, 1:] if fields.shape[-1] % 2 == 0 else spectra  # an even side's centre is one off


def _turned(first: torch.Tensor, second: torch.Tensor, shared: float) -> float:
    """The share of what `first` and `second` (two halves' fields) share that their turns keep: 1 less their
    parts that differ from their mean over the four turns, multiplied across the halves, as a share of the halves
    multiplied (a product across halves: what is noise in one half is not in the other, and cancels). 1.0 where the
    halves are no more alike than `shared`: nothing is shared to lose."""
    first, second = first - first.mean(), second - second.mean()
    if _correlation(first, second) <= shared:
        return 1.0
    uneven = [f - sum(f.rot90(k, (0, 1)) for k in range(4)) / 4 for f in (first, second)]
    return 1.0 - ((uneven[0] * uneven[1]).sum() / (first * second).sum()).item()


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return ((a * b).sum() / ((a.square().sum() * b.square().sum()).sqrt() + 1e-12)).item()


def decode_image(path: str | Path, size: int, channels: int, resize: str = "squash") -> torch.Tensor:
    """Decode an image file to a uint8 (channels, size, size) tensor (see `decode_bytes`)."""
    return decode_bytes(Path(path).read_bytes(), size, channels, resize)


def decode_bytes(
    data: bytes, size: int, channels: int, resize: str = "squash", max_pixels: int | None = None
) -> torch.Tensor:
    """Decode an image file's bytes to a uint8 (channels, size, size) tensor. A JPEG already at the size decodes
    with libjpeg-turbo through torchvision.io (several times faster than PIL for small ones, pixel for pixel
    the same); every other file goes through PIL and `image_to_tensor`, whose resize earlier runs were trained
    on. `resize` makes a non-square image square (see RESIZE_RULES); `max_pixels`: see `open_image`."""
    header = jpeg_header(data) if data[:2] == b"\xff\xd8" else None
    decode_jpeg = jpeg_decoder() if header and header[:2] == (size, size) and header[2] in (1, 3) else None
    if decode_jpeg:
        try:  # from writable memory: torch.frombuffer warns on read-only bytes
            pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), apply_exif_orientation=True)
            if pixels.shape[-2:] == (size, size):  # an EXIF rotation of a square keeps it square
                return to_channels(pixels[None], channels)[0]
        except RuntimeError:  # libjpeg-turbo refuses it: PIL decides, and names what is wrong
            pass
    with open_image(io.BytesIO(data), max_pixels, size) as img:
        img.load()  # decode now, so that a truncated file fails here rather than later
        return image_to_tensor(img, size, channels, resize)


def jpeg_header(data: bytes | bytearray) -> tuple[int, int, int] | None:
    """(width, height, colour components) from a JPEG's frame header, or None if it has none."""
    i = 2
    while i + 9 < len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame (not DHT, JPG, DAC)
            height, width = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            return (width, height, data[i + 9]) if width and height else None
        i += 1 if marker == 0xFF else 2 + int.from_bytes(data[i + 2 : i + 4], "big")  # a fill byte, or a segment
    return None


def image_to_tensor(img: Image.Image, size: int, channels: int, resize: str = "squash") -> torch.Tensor:
    """Upright by its EXIF rotation, transparency flattened onto white, made square by `resize`, resized to
    size x size, and converted to `channels` by `to_channels`: a uint8 (channels, size, size) tensor."""
    if not img.width or not img.height:
        raise ValueError(f"an empty image ({img.width}x{img.height} pixels) has nothing to classify")
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:  # phone photos store their rotation in EXIF
        img = ImageOps.exif_transpose(img)  # (a copy: an upright image keeps its pixels where they are)
    if img.mode in WIDE_GRAY_MODES:
        img = Image.fromarray(to_8_bits(np.asarray(img)))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img.alpha_composite(rgba)
    img = img.convert("L" if img.mode in GRAY_MODES and channels == 1 else "RGB")
    if resize != "squash" and img.width != img.height:
        side = min(img.size) if resize == "crop" else max(img.size)
        left, top = _offset(img.width, side), _offset(img.height, side)
        img = img.crop((left, top, left + side, top + side))  # outside the image, PIL fills black: the pad
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8).reshape(size, size, -1)
    return to_channels(torch.from_numpy(array.copy()).permute(2, 0, 1)[None], channels)[0]


def to_square(images: torch.Tensor, resize: str) -> torch.Tensor:
    """(N, C, H, W) images made square: as they are (squash: the resize stretches them), cut to their
    centre square (crop), or centred on a black square (pad)."""
    height, width = images.shape[-2:]
    if resize == "squash" or height == width:
        return images
    side = min(height, width) if resize == "crop" else max(height, width)
    top, left = _offset(height, side), _offset(width, side)
    if resize == "crop":
        return images[..., top : top + side, left : left + side]
    out = images.new_zeros(*images.shape[:-2], side, side)
    out[..., -top : -top + height, -left : -left + width] = images
    return out


def _offset(length: int, side: int) -> int:
    """Where a centred square of `side` starts along `length`: negative when it is larger (a pad)."""
    return (length - side) // 2 if length >= side else -((side - length) // 2)


def to_8_bits(pixels: np.ndarray) -> np.ndarray:
    """16-bit, 32-bit and float grey pixels scaled to 0..255 (PIL's own conversion clips them instead, so a
    16-bit PNG turns all white and a float TIFF all black). Integers are read by their range: 8-bit values
    stay, 16-bit ones are divided by 257; floats in [0, 1] are multiplied by 255, floats in [0, 255] stay;
    anything else (a depth map, say) is stretched from its own minimum to its maximum."""
    values = pixels.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    integer = np.issubdtype(pixels.dtype, np.integer)
    if low >= 0 and high <= (1 if not integer else 0):
        scaled = values * 255
    elif low >= 0 and high <= 255:
        scaled = values
    elif integer and low >= 0 and high <= 65535:
        scaled = values / 257
    else:
        scaled = (values - low) * (255 / max(high - low, 1e-12))
    return np.nan_to_num(scaled, nan=0.0).round().clip(0, 255).astype(np.uint8)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) images as 1 or 3 channels: grey copied into RGB, or colour made grey by PIL's own
    luma (ITU-R 601-2), bit for bit, so an image gets the same input whichever way it arrives."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1)
    weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.int32).view(1, 3, 1, 1)
    return (((images.int() * weights).sum(1, keepdim=True) + 0x8000) >> 16).to(torch.uint8)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) images resized to size x size (antialiased bilinear), in chunks to bound memory."""
    if images.shape[-2:] == (size, size):
        return images
    chunks = [
        F.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        for c in images.split(4096)
    ]
    return torch.cat(chunks).round_().clamp_(0, 255).to(torch.uint8)


DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
