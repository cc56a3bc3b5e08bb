"""Write a CIFAR-10 image folder as the `cifar10/train.pt` and `cifar10/test.pt` that the speed records read.

    python benchmarks/records_data.py FOLDER OUT   # FOLDER holds train/<class>/*.jpg and test/<class>/*.jpg

airbench and hiverge's cifar10-speedrun load a dict of `images` (N, 32, 32, 3 uint8), `labels` (N int64)
and `classes` (list of str) from OUT/train.pt and OUT/test.pt. Decoding goes through cnnkit's own folder
loader, so the records and cnnkit train on exactly the same pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cnnkit.data import load_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    data = load_data(str(args.folder), val_fraction=0.0)
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        part = data.splits[split]
        images = part.images.permute(0, 2, 3, 1).contiguous()  # (N, C, H, W) -> (N, H, W, C)
        torch.save({"images": images, "labels": part.labels, "classes": data.classes}, args.out / f"{split}.pt")
        print(f"{args.out / split}.pt: {tuple(images.shape)} images, classes {', '.join(data.classes)}")


if __name__ == "__main__":
    main()
