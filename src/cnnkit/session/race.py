"""The automatic recipe's race: where its rules of thumb have a real choice whose answer depends on the data, the data
decides. First the image size and, for grey images, right-angle turns, measured on the images themselves
(`size_for_detail`: the smallest that keeps their detail; `turns_for_symmetry`: turns where a turn keeps what each
class's images share; short trials cannot see what either is worth). Then the choices short trials can tell apart
(`race_candidates`: flips for grey images, the balanced sampler): each candidate trains on a short schedule on most
of the training images and is scored by its balanced accuracy on the rest; with two or more open, the best, the
winning changes combined and the rule race again on schedules three times longer (successive halving, as Hyperband
and ASHA do), where the race's time holds that second round. The winner replaces the rule only when ahead of it by
more than twice the noise of their difference. It then trains the run, in the time the rule's steps would have taken
(or what is left of --budget).

Every candidate trains with the run's seed, so they see the same initial draws and batches: what differs is the
choice. The race is written to race.json (and the report); config.yaml holds the winner, so a repeat trains it
alone, exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from cnnkit.core.progress import say
from cnnkit.data import AtMost, Dataset
from cnnkit.data.loader import DeviceBatches
from cnnkit.data.sets import ImageSet
from cnnkit.models import AUTO
from cnnkit.session.context import RunContext, build, load_at
from cnnkit.session.planning import loss_weights, train_batches
from cnnkit.settings.config import TrainConfig
from cnnkit.settings.recipes import RECIPE, describe, race_candidates, size_for_detail, turns_for_symmetry
from cnnkit.training.evaluation import eval_batch, predict_logits
from cnnkit.training.stopping import TrainingDiverged
from cnnkit.training.trainer import Trainer

RULES = RECIPE["race"]
DETAIL_SAMPLE = 512  # training images the detail is measured on


def race(ctx: RunContext, asked: TrainConfig, started: float) -> tuple[RunContext, dict | None]:
    """The run's context with what the data decided in place of the rule's choices (the same one when nothing
    is open, or the race cannot run: then it says why), and the race's record for race.json (None without a
    race). `asked`: the settings as the user gave them; `started`: when the run began, for --budget."""
    cfg, data, given = ctx.cfg, ctx.data, frozenset(asked.given) - {"model"}
    if not (asked.model == AUTO and asked.race and ctx.info.module is None and _from_scratch(cfg)):
        return ctx, None
    why_not = _why_not(ctx)
    if why_not:
        say(f"race: none, {why_not}; the recipe's rules of thumb stand (--no-race skips this check)")
        return ctx, None
    sizes = {data.image_size: data}  # the run's own split, at each size

    def data_at(size: int) -> Dataset:
        if size not in sizes:
            sizes[size] = load_at(cfg, size, ctx.machine)
        return sizes[size]

    base: dict = {}
    size_line = ""
    if "image_size" not in given:
        top = load_at(cfg, AtMost(max(RULES["sizes"][_kind(ctx)])), ctx.machine)  # the folder's own, or the top
        sizes[top.image_size] = top
        base, size_line = size_for_detail(cfg, top.splits["train"].images[:DETAIL_SAMPLE], ctx.machine)
        say(size_line)
    turns_line = ""
    if data.channels == 1 and "turns" not in given:  # a micrograph has no up; a glyph or a grained surface has
        train = data_at(base.get("image_size", data.image_size)).splits["train"]
        turns, turns_line = turns_for_symmetry(
            train.images[: RULES["turn_sample"]], train.labels[: RULES["turn_sample"]]
        )
        base = {**base, **turns}
        say(turns_line)
    held_out = _race_val(data, cfg.seed)
    arena = Arena(ctx, functools.cache(lambda size: _split(data_at(size), held_out)), started, base)  # split once
    candidates = race_candidates(arena.settings({}), data, given)
    rounds, no_trials = _rounds(arena, len(candidates), len(held_out)) if len(candidates) > 1 else (0, "")
    if no_trials:
        say(f"race: no trials, as {no_trials}; the rules of thumb stand")
        candidates = [{}]
    record: dict = {
        "rule": describe(cfg, len(data.splits["train"])),
        "size": size_line,
        "turns": turns_line,
        "rounds": [],
    }
    winner: dict = {"name": name(base), "changes": {}}
    if len(candidates) > 1:
        record["rounds"] = _race_rounds(arena, candidates, rounds)
        winner, record["best"] = _winner(arena, record["rounds"][-1])
    final = arena.final_settings(winner["changes"])
    record["winner"] = {**winner, "changes": {**base, **winner["changes"]}}
    if final == cfg:
        return ctx, record
    say(f"the run trains {describe(final, len(data.splits['train']))}")
    return build(final, data_at(final.image_size or data.image_size), None, ctx.machine, ctx.folder), record


def _kind(ctx: RunContext) -> str:
    return "cpu" if ctx.machine.device.type == "cpu" else "gpu"


def _rounds(arena: Arena, candidates: int, held_out: int) -> tuple[int, str]:
    """The rounds the race runs: two with three candidates or more, one with two, or one where the race's time
    cannot buy the second's trials their least steps; none, and why, where held-out images or time are too few."""
    if held_out < RULES["least_val"]:
        return 0, (
            f"{held_out} held-out images cannot tell candidates a few points apart (it needs {RULES['least_val']}, "
            "a fifth of the training and validation images)"
        )
    pace = arena.pace(arena.settings({}))
    steps = {rounds: arena.first_seconds(_trials(candidates, rounds)) / pace for rounds in (1, 2)}
    if candidates > 2 and steps[2] >= RULES["least_steps"]:
        return 2, ""
    if steps[1] >= RULES["least_steps"]:
        return 1, ""
    return 0, f"the race's time buys {steps[1]:.0f} steps a candidate, and a trial needs {RULES['least_steps']}"


def _trials(candidates: int, rounds: int) -> int:
    """The trials the race's time is shared by, in first-round lengths: every candidate once, then in a second
    round the finalists (the rule, the best and the winning changes combined) three times as long."""
    return candidates + (3 * (RULES["finalists"] + 2) if rounds == 2 else 0)


def _from_scratch(cfg: TrainConfig) -> bool:
    """The recipe's own net from scratch: a fine-tuned backbone's choices are another recipe's."""
    return not (cfg.starts_pretrained or cfg.init_from)


def _why_not(ctx: RunContext) -> str | None:
    """Why this run cannot race (None: it can)."""
    n_train = len(ctx.data.splits["train"])
    if ctx.machine.world_size > 1:
        return "as it trains with several processes"
    if n_train >= RULES["most_train"]:
        return f"as {n_train:,} training images is a large folder (the race is for fewer than {RULES['most_train']:,})"
    return None


def _race_val(data: Dataset, seed: int) -> torch.Tensor:
    """Which of the training and validation images (together, in that order) the race scores on: the
    validation split's size or RULES' share of them, whichever is more, drawn from each class alike. The
    run's own split stays as it is: the race only needs enough images to tell its candidates apart."""
    labels = torch.cat([data.splits["train"].labels, data.splits["val"].labels])
    share = max(RULES["val_share"], len(data.splits["val"]) / len(labels))
    draw = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(len(data.classes)):
        index = (labels == c).nonzero().flatten()
        picked.append(index[torch.randperm(len(index), generator=draw)][: round(share * len(index))])
    return torch.cat(picked).sort().values


def _split(data: Dataset, held_out: torch.Tensor) -> Dataset:
    """The data with the race's split: `held_out` of its training and validation images to score on, the
    rest to train on."""
    pool = ImageSet.concat([data.splits["train"], data.splits["val"]])
    rest = torch.ones(len(pool), dtype=torch.bool)
    rest[held_out] = False
    splits = {"train": pool.subset(rest.nonzero().flatten()), "val": pool.subset(held_out)}
    return dataclasses.replace(data, splits={**data.splits, **splits})


class Arena:
    """Trains and scores candidates: each a change to `base` (the rule with the measured size), on the data at
    its image size. Lengths are in seconds of this machine: a step's time is measured for each net and size (a
    larger image or a wider net costs more a step, and on a CPU by far less than its arithmetic, as every step's
    fixed costs weigh), so that each candidate gets the same time, and the winner the time the rule would
    have taken."""

    def __init__(self, ctx: RunContext, data_at: Callable[[int], Dataset], started: float, base: dict):
        self.ctx, self.data_at, self.started, self.base = ctx, data_at, started, base
        self.paces: dict[str, float] = {}  # seconds a step, by net and image size
        self.right: dict[tuple[str, int], torch.Tensor] = {}  # which held-out images a trial got right
        labels = data_at(ctx.data.image_size).splits["val"].labels
        counts = labels.bincount(minlength=len(ctx.data.classes))
        self.weights = 1.0 / (len(counts.nonzero()) * counts[labels].double())  # each image's share of balanced acc.

    def settings(self, changes: dict) -> TrainConfig:
        return dataclasses.replace(self.ctx.cfg, **{**self.base, **changes})

    def pace(self, cfg: TrainConfig) -> float:
        """Seconds a step of `cfg` on this machine: the median of a few, timed after an untimed one, in turn with
        the rule's steps, so that both see the machine alike. Timed one after the other, the steps at 96 px that
        took the rule's time on the inspection folder swung from 185 to 307 between runs; in turn, 216-246."""
        if _pace_key(cfg) not in self.paces:  # the first time, the rule's and the race's own net and size too
            measured = self._time_in_turn([self.ctx.cfg, self.settings({}), cfg])
            rule = _pace_key(self.ctx.cfg)
            to_first = self.paces.get(rule, measured[rule]) / measured[rule]  # as the rule's first measure
            self.paces = {**{key: pace * to_first for key, pace in measured.items()}, **self.paces}
        return self.paces[_pace_key(cfg)]

    def _time_in_turn(self, settings: list[TrainConfig]) -> dict[str, float]:
        """Each net and size's seconds a step, their steps taken in turn."""
        unique = {_pace_key(cfg): cfg for cfg in settings}
        trainers = {key: self._trainer(cfg, RULES["timed_steps"] + 1)[1] for key, cfg in unique.items()}
        batches = {key: _batches(t) for key, t in trainers.items()}
        times: dict[str, list[float]] = {key: [] for key in trainers}
        for _ in range(RULES["timed_steps"] + 1):
            for key, trainer in trainers.items():
                began = time.perf_counter()
                trainer.train_step(*next(batches[key]))
                self.ctx.machine.sync()
                times[key].append(time.perf_counter() - began)
        return {key: statistics.median(taken[1:]) for key, taken in times.items()}

    def rule_seconds(self) -> float:
        """The time the rule's run would train: its steps (or its epochs over the training split), at its pace."""
        cfg = self.ctx.cfg
        steps = cfg.steps or (cfg.epochs or 1) * math.ceil(len(self.ctx.data.splits["train"]) / cfg.batch_size)
        return steps * self.pace(cfg)

    def first_seconds(self, trials: int) -> float:
        """Each of the first round's `trials`' time: an equal share of the race, which is a share of the rule's
        time, or with --budget of the seconds left."""
        cfg = self.ctx.cfg
        if cfg.budget is None:
            return RULES["share"] * self.rule_seconds() / trials
        return RULES["budget_share"] * max(0.0, cfg.budget - (time.perf_counter() - self.started)) / trials

    def steps_for(self, changes: dict, seconds: float) -> int:
        return max(RULES["least_steps"], round(seconds / self.pace(self.settings(changes))))

    def trial(self, changes: dict, steps: int) -> dict:
        """One candidate trained for `steps` from the run's seed and scored on the race's held-out images (a
        trial whose loss went NaN got none right; the run itself says so, if it goes NaN too)."""
        timed = time.perf_counter()
        trial, trainer, diverged = self._train(self.settings(changes), steps)
        val = DeviceBatches(trial.data.splits["val"], eval_batch(trial.data.image_size), trial.preprocess)
        logits, labels = predict_logits(trainer.kept_model, val, self.ctx.machine)
        right = (logits.argmax(1) == labels) & (not diverged)
        self.right[name(changes), steps] = right
        return {
            "val_balanced_accuracy": round((right.double() * self.weights).sum().item(), 6),
            "val_accuracy": round(right.float().mean().item(), 6),
            "steps": steps,
            "seconds_a_step": round(self.pace(trial.cfg), 5),
            "seconds": round(time.perf_counter() - timed, 2),  # with building the net and scoring it
        }

    def gain(self, candidate: dict, rule: dict) -> tuple[float, float]:
        """How much more of the held-out images' balanced accuracy `candidate` got right than `rule` in the same
        round, and that difference's noise (its standard error, from the images they disagree on)."""
        ours, theirs = (self.right[c["name"], c["steps"]].double() for c in (candidate, rule))
        differs = (ours - theirs) * self.weights
        return differs.sum().item(), differs.square().sum().sqrt().item()

    def _trainer(self, settings: TrainConfig, steps: int) -> tuple[RunContext, Trainer]:
        """A fresh net of `settings` on the data at its size, with a trainer for `steps`."""
        cfg = dataclasses.replace(settings, steps=steps, epochs=None, budget=None, ema=0.0)
        ctx = self.ctx
        trial = build(cfg, self.data_at(cfg.image_size or ctx.data.image_size), None, ctx.machine, ctx.folder)
        trial.model.to(ctx.machine.device, memory_format=ctx.machine.memory_format)  # type: ignore[call-overload]
        return trial, Trainer(trial.model, trial.spec, train_batches(trial), cfg, ctx.machine, loss_weights(trial))

    def _train(self, settings: TrainConfig, steps: int) -> tuple[RunContext, Trainer, bool]:
        """`settings` trained for `steps`, and whether it went NaN."""
        trial, trainer = self._trainer(settings, steps)
        try:
            trainer.fit(None)
        except TrainingDiverged:
            return trial, trainer, True
        return trial, trainer, False

    def final_settings(self, changes: dict) -> TrainConfig:
        """The winner's settings for the run: in the time the rule's steps would have taken (--budget and a
        length of the user's own plan themselves)."""
        cfg, rule = self.settings(changes), self.ctx.cfg
        if rule.steps is None or _pace_key(cfg) == _pace_key(rule):
            return cfg
        return dataclasses.replace(cfg, steps=max(1, round(self.rule_seconds() / self.pace(cfg))))


def _pace_key(cfg: TrainConfig) -> str:
    return f"{cfg.model} at {cfg.image_size} px"  # flips and the sampler cost nothing a step


def _batches(trainer: Trainer) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The trainer's batches in its own order, its first pass over and over (a tiny folder has one batch)."""
    batches = trainer.train_batches
    return itertools.cycle(batches.iterate(batches.new_order(), 0, 1, stop_step=None))


def _race_rounds(arena: Arena, candidates: list[dict], number: int) -> list[list[dict]]:
    """Each of the `number` rounds' candidates, best first. The first: every candidate for the same time. The
    second: the rule, the best `finalists` and the winning changes combined, each three times as long."""
    finals = RULES["finalists"]
    seconds = arena.first_seconds(_trials(len(candidates), number))
    rounds = [_round(arena, [(c, arena.steps_for(c, seconds)) for c in candidates], 1)]
    if number == 2:  # the rule races on: the winner must beat it at the same length
        best = [c["changes"] for c in rounds[0] if c["changes"]][:finals]
        finalists = [candidates[0], *best, *[c for c in [_combined(rounds[0])] if c and c not in best]]
        rounds.append(_round(arena, [(c, arena.steps_for(c, 3 * seconds)) for c in finalists], 2))
    return rounds


def _round(arena: Arena, candidates: list[tuple[dict, int]], number: int) -> list[dict]:
    """Every candidate trained for its steps and scored, best first: by validation balanced accuracy, then
    accuracy, then the fewer changes from the rule (a tie keeps the rule)."""
    started = time.perf_counter()
    trials = [{"name": name(c), "changes": c, **arena.trial(c, steps)} for c, steps in candidates]
    order = sorted(
        range(len(trials)),
        key=lambda i: (-trials[i]["val_balanced_accuracy"], -trials[i]["val_accuracy"], len(candidates[i][0]), i),
    )
    scored = [trials[i] for i in order]
    shown = ", ".join(f"{c['name']} {c['val_balanced_accuracy']:.3f}" for c in scored)
    steps = sorted(c["steps"] for c in scored)
    say(
        f"race round {number}: {len(scored)} candidates, {steps[0]}-{steps[-1]} steps each, "
        f"{time.perf_counter() - started:.1f}s; held-out balanced accuracy: {shown}"
    )
    return scored


def _winner(arena: Arena, scored: list[dict]) -> tuple[dict, dict]:
    """The last round's best, when ahead of the rule by more than RULES' noise_times the noise of their difference
    (else the rule), and how far ahead it was; said in a line."""
    best, rule = scored[0], next(c for c in scored if not c["changes"])
    gain, noise = arena.gain(best, rule)
    winner = best if gain > RULES["noise_times"] * noise else rule
    odds = f"{gain:+.3f} balanced accuracy over the rule, noise {noise:.3f}"
    say(
        "race: the rule stays, ahead of every candidate"
        if best is rule
        else f"race: the winner is {best['name']} ({odds})"
        if winner is best
        else f"race: the rule stays ({best['name']}: {odds})"
    )
    return winner, {"name": best["name"], "gain": round(gain, 6), "noise": round(noise, 6)}


def _combined(scored: list[dict]) -> dict:
    """The changes of every candidate that beat the rule, the best first where two change the same setting."""
    rule = next(c for c in scored if not c["changes"])
    combined: dict = {}
    for c in scored:
        if c["val_balanced_accuracy"] > rule["val_balanced_accuracy"]:
            combined = {**c["changes"], **combined}
    return combined


def name(changes: dict) -> str:
    """A candidate in a few words: what it changes from the rule."""
    if not changes:
        return "the rule"
    words = []
    for key, value in changes.items():
        if key == "image_size":
            words.append(f"{value} px")
        elif key == "flip":
            words.append("flips" if value else "no flips")
        elif key == "turns":
            words.append("turns" if value else "no turns")
        elif key in ("model", "sampler"):
            words.append(f"{value} sampler" if key == "sampler" else str(value))
    return " + ".join(words)
