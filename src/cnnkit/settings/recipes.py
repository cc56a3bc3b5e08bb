"""Recipes that fit the data: the automatic recipe (the default), and presets rescaled to small data.

Both are decided from what the data is (training images, classes, image size, grey or colour) and what it
runs on, never from its name, so a folder of a user's own images gets the same care as CIFAR-10. Every
value chosen is written to config.yaml, so a run repeats exactly.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from cnnkit.core.errors import CnnkitError
from cnnkit.core.machine import Machine
from cnnkit.data import DIGIT_DATA, Dataset, is_folder
from cnnkit.data.images import TURN_LEAST, detail_kept, turn_kept
from cnnkit.models import AUTO, CUSTOM, pretrained
from cnnkit.settings.config import TrainConfig
from cnnkit.training.optimizers import PRETRAINED_HEAD_RATE

# The automatic recipe: every number it uses, in this one table, as airbench keeps its hyperparameters; each with
# why, and where measured its effect (BENCHMARKS.md). It reads what the data is (training images, classes, image
# size, grey or colour) and the machine, never the data's name. Defaults of the training loop itself stay with it
# (training/ imports no settings): the whitening bias's EARLY_SHARE, the one-cycle warm-up of 0.25, and
# PRETRAINED_HEAD_RATE, the backbone's rate a tenth of the new head's. The presets are tables of their own
# (presets.py).
# fmt: off
RECIPE: dict[str, Any] = {
    # airbench's fastcnn, whitened; its small width on a CPU. Muon trains the conv filters: against SGD at equal
    # steps, +1.3 points on CIFAR-10 and +4 to +9 on small folders
    "model": {"cpu": "fastcnn-small", "gpu": "fastcnn"},
    "settings": {
        "whiten": True, "optimizer": "muon", "muon_lr": 0.06, "muon_momentum": 0.85, "momentum": 0.85,
        "nesterov": True, "weight_decay": 5e-4, "schedule": "onecycle", "warmup": 0.25, "ema": 0.0,
    },
    "sgd_lr_per_image": 0.2 / 256,  # peak SGD rate (biases, head) per image of the batch: cifar10-cpu-best's, linear
    "batch": {"grey": 128, "colour": 256},
    "least_batch": 16,  # smaller batches make batch norm's statistics noise
    "least_steps_per_pass": 16,  # a small folder learns from more, smaller steps; on a CPU they cost the same per image
    "size_cap": {"cpu": 64, "gpu": 128},  # the image size at most: a 2-core CPU pays 4x per doubling of the side
    "least_size": 16,  # smaller images are enlarged: fastcnn's stem and three poolings need at least 9 pixels
    "passes": 16, "images_seen": (3_000, 270_000),  # within these bounds: a few-shot folder needs more, a big one fewer
    "label_smoothing": {"grey": 0.1, "colour": 0.2},  # mnist-fast's and cifar10-cpu-best's
    # flips and TTA (whose views include the mirror image) for colour only: grey images are mostly glyphs and scans,
    # where a mirror image is another symbol (for colour letters, --no-flip --no-tta: 0.83 to 0.90 on `many`)
    "flip": {"grey": False, "colour": True},
    # below this many training images per class: stronger augmentation pays (colour jitter for colour only) ...
    "few_per_class": 500,
    "few_augment": {"rotate": 10.0, "scale": 0.1, "jitter": 0.2, "erase": 0.25},
    # ... and fewer pixels: the net learns so few images by heart long before their detail runs out, so the time
    # the pixels would cost buys more passes instead (the `photos` folder)
    "few_size_cap": {"cpu": 48, "gpu": 128},
    # on a CPU, from this many colour training images, the wider net behind a stride-2 stem: it pays with many photos
    # (CIFAR-10 at 120 s: +1.3 points) but not on glyphs or a few thousand photos (MNIST -0.3, 49 classes -6); at a
    # batch this CPU runs 15% faster per image than 256 (+0.8 points at 120 s); with Muon's momentum and the warm-up
    # shorter and shifts of a 16th of the side, not a tenth: in the few passes a budget allows over many images,
    # +0.5 points on CIFAR-10 at equal steps (on small folders -2 to +5, not taken); and SiLU for GELU: as accurate
    # at equal steps, 7% more of them in a budget
    "wide": {
        "from_images": 20_000, "model": "fastcnn-s2", "batch": 512, "shift_share": 16,
        "settings": {"muon_momentum": 0.75, "warmup": 0.15, "activation": "silu"},
    },
    # fine-tuning a pretrained backbone, for small or large-image folders when torchvision's weights are on this
    # machine (never downloaded by the recipe): fastai's fine_tune in spirit (the head first, then all, Adam)
    "fine_tune": {
        "settings": {
            "pretrained": True, "whiten": False, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01,
            "schedule": "onecycle", "warmup": 0.1, "ema": 0.0, "freeze_epochs": 1,
        },
        "backbones": {  # the first whose weights are at hand: the fastest good one on a CPU, the best on a GPU
            "cpu": ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "resnet50", "convnext_tiny"),
            "gpu": ("convnext_tiny", "resnet50", "efficientnet_b0", "resnet18", "mobilenet_v3_small"),
        },
        "size": {"cpu": 112, "gpu": 224},  # half ImageNet's scale on a CPU, where each doubling costs 4x
        "batch": 64,
        "passes": 10, "images_seen": (1_000, 60_000),  # pretrained features need few passes
    },
    # the race (session/race.py): where the rule above has a real choice whose answer depends on the data, it is
    # measured. The image size: the smallest of `sizes` (up to the folder's own side) that keeps `detail` of the
    # images' variation (photos enlarged from CIFAR-10's 32 px keep 99.6% at 48 px; the inspection-like folder's
    # hairlines and spots 95.3% at 48, 98.3% at 96, where its balanced accuracy went from 0.72 to 0.98 at equal
    # steps) -- short trials cannot see it: at 8-45 steps every size scored at chance there. Then flips and the
    # sampler train on short schedules on the training split, scored by balanced accuracy on held-out images
    "race": {
        "sizes": {"cpu": (48, 64, 96, 128), "gpu": (64, 96, 128, 192)},
        "detail": 0.98,
        # turns on for grey images when a turn keeps this share of what each class's images share (generated
        # micrographs 0.986-1.0; the inspection folder's brushed grain 0.971, glyphs 0.89, the 8x8 digits 0.57): short
        # trials cannot see it
        "turn_kept": 0.98,
        "turn_sample": 2048,  # training images the turns are measured on
        "imbalance": 3.0,  # the balanced sampler races when the largest class has more than 3x the smallest's images
        "share": 0.25,  # of the rule's steps: with building, timing and scoring, the default stays within 1.5x its time
        "budget_share": 0.3,  # of what is left of a --budget: the winner trains on the rest
        "val_share": 0.2,  # of the training and validation images, held out to score on (the run's split stays)
        "least_val": 100,  # fewer images cannot tell candidates a few points apart: the rule stays, and says so
        "most_train": 20_000,  # larger folders keep the rule measured on CIFAR-10: decoding each size costs minutes
        "least_steps": 8,  # a shorter trial has learned nothing to score
        "timed_steps": 6,  # each net and size's seconds a step: the median of this many, after an untimed one
        "finalists": 1,  # with both changes open, the best, both combined and the rule race again, 3x longer
        # the winner replaces the rule only when ahead of it by more than this many standard errors: at 1.0 flips won
        # on digits at one thread (+0.027, noise 0.024; the rule at two threads) and the run lost 0.6 points of test
        "noise_times": 2.0,
    },
    # a named model's defaults where the data decides: 15 passes, crops shifted by up to a tenth of the side (28 px
    # images get 2, 32 px 3, 8 px none), flips but for the digit data sets
    "named": {"epochs": 15, "shift_share": 10},
}
# fmt: on
PRESET_MIN_IMAGES = 2 * RECIPE["least_batch"]  # fewer training images than this and no preset's recipe can fit
# what `--help` says the recipe chooses (the length as --epochs: the recipe's steps stand for it)
CHOSEN_FROM_DATA = frozenset(RECIPE["settings"]) | frozenset(RECIPE["wide"]["settings"]) | {
    "image_size", "batch_size", "lr", "epochs", "label_smoothing", "flip", "tta", "translate", "rotate", "scale",
    "jitter", "erase", "turns",
}  # fmt: skip


def settle(cfg: TrainConfig, data: Dataset, machine: Machine, source: dict | None) -> tuple[TrainConfig, str]:
    """The settings a run trains with, from what the user set (`cfg.given`: nothing else counts as set, and
    the preset's values are already in `cfg`): the automatic recipe (model `auto`) or the preset fitted to
    this data, then the defaults that depend on it. `source` is the model.json of the run fine-tuned from
    (--init-from), if any. Returns them with a line that says what was chosen ("" for nothing)."""
    cfg, line = _fit_to_data(cfg, data, machine, frozenset(cfg.given), source)
    return _with_data_defaults(cfg, cfg.image_size or data.image_size), line


def _fit_to_data(
    cfg: TrainConfig, data: Dataset, machine: Machine, given: frozenset[str], source: dict | None
) -> tuple[TrainConfig, str]:
    """The settings with the automatic recipe or the preset fitted to this data; what the user set
    themselves (`given`) always wins."""
    if cfg.model == AUTO:
        chosen, line = {**auto_settings(data, machine, given), **_source_run(source)}, "automatic recipe"
        why = data.channels_reason  # grey or colour decides much of the recipe: the user sees which, and why
        given = given - {"model"}  # `--model auto` asks for the recipe's model
    elif cfg.preset is not None and "batch_size" not in given:
        chosen, line = fitted_preset(cfg, len(data.splits["train"]), machine.world_size), f"preset {cfg.preset}"
        why = ""
    else:
        return cfg, ""
    chosen = {k: v for k, v in chosen.items() if k not in given}
    if "lr" in given and chosen.get("optimizer") == "muon":  # a rate of the user's own (or to find) is SGD's one rate
        chosen["optimizer"] = "sgd"
    if given & {"epochs", "budget"}:  # the user's own length wins over the recipe's
        chosen.pop("steps", None)
    cfg = dataclasses.replace(cfg, **chosen)
    return cfg, f"{line}: {describe(cfg, len(data.splits['train']))}" + (f"; {why}" if why else "")


def _with_data_defaults(cfg: TrainConfig, image_size: int) -> TrainConfig:
    """Fill the defaults that depend on the data, so config.yaml repeats the run even if defaults change later."""
    # pretrained filters need small steps, a new head big ones (--lr auto: the range test splits its rate)
    if cfg.starts_pretrained and cfg.head_lr is None and cfg.lr != AUTO:
        cfg = dataclasses.replace(cfg, head_lr=cfg.peak_lr, lr=cfg.peak_lr / PRETRAINED_HEAD_RATE)
    named = RECIPE["named"]
    return dataclasses.replace(
        cfg,
        data=str(Path(cfg.data).expanduser().resolve()) if is_folder(cfg.data) else cfg.data,
        data_dir=str(Path(cfg.data_dir).expanduser().resolve()) if cfg.data_dir else None,
        init_from=str(Path(cfg.init_from).expanduser().resolve()) if cfg.init_from else None,
        pretrained_weights=str(Path(cfg.pretrained_weights).expanduser().resolve()) if cfg.pretrained_weights else None,
        image_size=image_size,
        translate=cfg.translate if cfg.translate is not None else image_size // named["shift_share"],
        flip=cfg.flip if cfg.flip is not None else cfg.data not in DIGIT_DATA,
        epochs=named["epochs"] if cfg.epochs is None and cfg.steps is None and cfg.budget is None else cfg.epochs,
        rotate=cfg.rotate or 0.0,
        scale=cfg.scale or 0.0,
        jitter=cfg.jitter or 0.0,
        erase=cfg.erase or 0.0,
    )


def auto_settings(data: Dataset, machine: Machine, given: frozenset[str] = frozenset()) -> dict:
    """A whole recipe from the data: model, batch, rate, number of steps, augmentation and TTA (see RECIPE)."""
    n, grey, kind = len(data.splits["train"]), data.channels == 1, _kind(machine)
    colour = "grey" if grey else "colour"
    few = n / len(data.classes) < RECIPE["few_per_class"]
    backbone = _backbone_at_hand(machine, few or data.image_size >= auto_size(machine), given)
    more = 1.0  # times the images seen: what a smaller image size saves, spent on more steps
    if backbone:
        tune = RECIPE["fine_tune"]
        batch, passes, seen = fit_batch(tune["batch"], n, machine.world_size), tune["passes"], tune["images_seen"]
        recipe = {**tune["settings"], "model": backbone, "image_size": tune["size"][kind]}
    else:
        size = max(data.image_size, RECIPE["least_size"])
        if few and "image_size" not in given:  # a small folder is learned by heart long before its pixels run out
            size = min(size, RECIPE["few_size_cap"][kind])
            more = max(1.0, (data.image_size / size) ** 2)
        wide = RECIPE["wide"] if kind == "cpu" and n >= RECIPE["wide"]["from_images"] and not grey else None
        batch = fit_batch(wide["batch"] if wide else RECIPE["batch"][colour], n, machine.world_size)
        passes, seen = RECIPE["passes"], RECIPE["images_seen"]
        recipe = {**RECIPE["settings"], "model": RECIPE["model"][kind], "image_size": size}
        if wide:
            recipe |= {**wide["settings"], "model": wide["model"], "translate": max(1, size // wide["shift_share"])}
        recipe["lr"] = round(RECIPE["sgd_lr_per_image"] * batch, 6)
    augment = {k: v if few and (k != "jitter" or not grey) else 0.0 for k, v in RECIPE["few_augment"].items()}
    return {
        **recipe,
        "batch_size": batch,
        "steps": max(1, round(more * min(max(passes * n, seen[0]), seen[1]) / batch)),
        "label_smoothing": RECIPE["label_smoothing"][colour],
        "flip": RECIPE["flip"][colour],
        "tta": RECIPE["flip"][colour],  # its views include the mirror image
        **augment,
    }


def size_for_detail(cfg: TrainConfig, images: torch.Tensor, machine: Machine) -> tuple[dict, str]:
    """The change to the rule's image size that keeps RECIPE's share of `images`' detail (uint8, at the largest
    size the race considers, or the folder's own when smaller), and a line that says why ({} and why not). A
    folder whose own images are no larger than the rule's size keeps it (the rule enlarges tiny ones)."""
    top, size = images.shape[-1], cfg.image_size
    assert size is not None and cfg.translate is not None  # settled
    wanted = RECIPE["race"]["detail"]
    kept = {s: detail_kept(images, s) for s in RECIPE["race"]["sizes"][_kind(machine)] if s < top}
    # never below the rule's size: a smaller one's gain, more steps in the same time, is not measured
    chosen = next((s for s, share in kept.items() if s >= size and share >= wanted), top)
    shown = ", ".join(f"{s} px {share:.1%}" for s, share in kept.items())
    line = f"the smallest that keeps {wanted:.0%} of the images' detail ({shown})" if kept else "the folder's own"
    if chosen <= size:
        return {}, f"size: {size} px as the rule says, {line}"
    return {"image_size": chosen, "translate": round(cfg.translate * chosen / size)}, f"size: {chosen} px, {line}"


def turns_for_symmetry(images: torch.Tensor, labels: torch.Tensor) -> tuple[dict, str]:
    """Right-angle turns for grey training `images` (uint8, with their `labels`) when a turn keeps RECIPE's share
    of what each class's images share, and a line that says why ({} and why not)."""
    wanted, kept = RECIPE["race"]["turn_kept"], turn_kept(images, labels)
    if kept is None:
        return {}, f"turns: off, as no class has the {TURN_LEAST} training images a turn's effect is measured on"
    line = f"a right-angle turn keeps {kept:.1%} of what each class's images share"
    if kept >= wanted:
        return {"turns": True}, f"turns: on, {line}"
    return {}, f"turns: off, {line} (on from {wanted:.0%})"


def race_candidates(cfg: TrainConfig, data: Dataset, given: frozenset[str]) -> list:
    """The recipe's real choices on this data that short trials can tell apart, each a change to its settings
    (none first, as {}): flips for grey images (colour ones have flips; photographs have an up) and the balanced
    sampler for imbalanced classes. What the user set is no choice. (Not the net's width: short trials favour the
    wider fastcnn-s2, which learns faster early, and it then lost 3 points at full length on the 49-class `many`
    folder. Not turns: on micrographs every trial scored at chance, and turns won 5.5 points at full length.)"""
    race = RECIPE["race"]
    changes: list[dict] = []
    if data.channels == 1 and not given & {"flip", "tta"}:  # TTA's views include the mirror image
        changes.append({"flip": not cfg.flip, "tta": not cfg.flip})
    counts = [c for c in data.splits["train"].labels.bincount().tolist() if c]
    if not given & {"sampler", "class_weights"} and max(counts) > race["imbalance"] * min(counts):
        changes.append({"sampler": "balanced"})
    return [{}, *changes]


def _backbone_at_hand(machine: Machine, worth_it: bool, given: frozenset[str]) -> str | None:
    """The pretrained backbone to fine-tune, if it pays here (a small folder or large images) and its weights
    are on this machine; never when the user chose how to start (--init-from, --pretrained-weights, --whiten)."""
    if not worth_it or given & {"init_from", "pretrained", "pretrained_weights", "whiten"}:
        return None
    return next((name for name in RECIPE["fine_tune"]["backbones"][_kind(machine)] if pretrained.at_hand(name)), None)


def _source_run(source: dict | None) -> dict:
    """Fine-tuning (--init-from RUN) keeps the source run's model, activation and image size: its filters were
    learned in that net, at that scale."""
    if source is None or source["model"] == CUSTOM:  # only its own Python code can rebuild it: the recipe's model stays
        return {}
    activation = source["model_options"].get("activation")  # the net its weights were trained in
    return {"model": source["model"], "image_size": source["image_size"], "whiten": False, "activation": activation}


def auto_size(machine: Machine) -> int:
    """The automatic recipe's largest image side on this machine."""
    return RECIPE["size_cap"][_kind(machine)]


def _kind(machine: Machine) -> str:
    return "cpu" if machine.device.type == "cpu" else "gpu"


def fitted_preset(cfg: TrainConfig, n_train: int, processes: int = 1) -> dict:
    """A preset's batch size, with its rates rescaled, cut down to fit `n_train` images; its steps stay (the
    recipe's length in updates). Too few images for any batch: refused before training, with what to do."""
    if n_train < PRESET_MIN_IMAGES:
        raise CnnkitError(
            f"preset {cfg.preset} needs at least {PRESET_MIN_IMAGES} training images to fit its recipe, and this "
            f"data has {n_train}; leave out --preset for the automatic recipe, or add images"
        )
    batch = fit_batch(cfg.batch_size, n_train, processes)
    ratio = batch / cfg.batch_size
    rates = {}
    if cfg.lr != AUTO:  # --lr auto is found for the batch the run takes; Adam's rate scales by the square root
        rates["lr"] = cfg.peak_lr * (math.sqrt(ratio) if cfg.optimizer in ("adam", "adamw") else ratio)
    if cfg.head_lr is not None:
        rates["head_lr"] = cfg.head_lr * ratio
    return {"batch_size": batch, **{k: round(v, 8) for k, v in rates.items()}} if ratio < 1 else {}


def fit_batch(batch: int, n_train: int, processes: int = 1) -> int:
    """Halve `batch` until a pass over `n_train` images takes at least RECIPE's least steps a pass; then round it
    down to a multiple of `processes`, which share every batch evenly."""
    least, steps = RECIPE["least_batch"], RECIPE["least_steps_per_pass"]
    while batch > least and n_train < steps * batch:
        batch = max(least, batch // 2)
    batch = max(1, min(batch, n_train))
    return max(processes, batch - batch % processes)


def describe(cfg: TrainConfig, n_train: int) -> str:
    """One line: what will train, on what batches, for how long, with what augmentation."""
    per_pass = max(1, n_train // cfg.batch_size)
    length = (
        f"{cfg.steps} steps ({cfg.steps / per_pass:,.1f} passes)"
        if cfg.steps
        else f"{cfg.epochs} epochs"
        if cfg.epochs
        else f"steps planned for {cfg.budget:g}s"
    )
    augment = [
        name
        for name, on in (
            ("flips", cfg.flip),
            ("right-angle turns", cfg.turns),
            (f"rotate {cfg.rotate}", cfg.rotate),
            (f"scale {cfg.scale}", cfg.scale),
            (f"jitter {cfg.jitter}", cfg.jitter),
            (f"erase {cfg.erase}", cfg.erase),
            ("TTA", cfg.tta),
        )
        if on
    ]
    start = " (whitened)" if cfg.whiten else " (pretrained)" if cfg.starts_pretrained else ""
    rate = (
        f"muon lr {cfg.muon_lr} (sgd {cfg.lr} for biases and head)"
        if cfg.optimizer == "muon"
        else f"{cfg.optimizer} lr {cfg.lr}"
    )
    return f"{cfg.model}{start}, batch {cfg.batch_size}, {rate}, {length}" + (
        f", {', '.join(augment)}" if augment else ""
    )
