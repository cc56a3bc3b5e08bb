"""What a sweep searches: settings with values to choose from or a range, and the three ways to pick points.

grid: every combination of the listed values. random: points drawn from a seeded generator, the same on
every call (so a stopped sweep draws the same trials again). tpe: Optuna's Tree-structured Parzen
Estimator, which draws each point where the trials so far did well (the `sweep` extra).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from cnnkit.core.errors import CnnkitError
from cnnkit.settings.config import TrainConfig, coerce, field_type

METHODS = ("grid", "random", "tpe")
NOT_SEARCHED = ("data", "data_dir", "out", "test", "report", "tensorboard", "device", "preset", "budget", "seed")


@dataclass(frozen=True)
class Param:
    """One searched setting: `choices` to pick from, or a range from `low` to `high`."""

    key: str
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0

    @property
    def log_scale(self) -> bool:  # rates and decays span orders of magnitude: a range of them is searched in logs
        return not self.choices and self.low > 0

    def draw(self, rng: random.Random) -> Any:
        if self.choices:
            return rng.choice(self.choices)
        if field_type(self.key) is int:
            return rng.randint(int(self.low), int(self.high))
        if self.log_scale:
            return readable(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return readable(rng.uniform(self.low, self.high))

    def distribution(self) -> Any:
        """The same search space as Optuna's distribution."""
        optuna = import_optuna()
        if self.choices:
            return optuna.distributions.CategoricalDistribution(self.choices)
        if field_type(self.key) is int:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log_scale)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log_scale)


def readable(value: Any) -> Any:
    """A float drawn from a range, to three significant digits: a setting found by search is no more precise."""
    return float(f"{value:.3g}") if isinstance(value, float) else value


def parse_search(search: dict[str, list | tuple] | list[str]) -> list[Param]:
    """Settings to search: in Python {key: [values]} or {key: (low, high)}; on the command line KEY=V1,V2,...
    or KEY=LOW..HIGH (searched on a log scale when LOW > 0)."""
    if isinstance(search, list):
        search = dict(_parse_text(item) for item in search)
    if not search:
        raise CnnkitError("a sweep needs something to search, e.g. --search lr=0.001,0.003,0.01")
    return [_param(key.replace("-", "_"), values) for key, values in search.items()]


def _parse_text(item: str) -> tuple[str, list | tuple]:
    key, equals, values = item.partition("=")
    if not equals or not values:
        raise CnnkitError(f"--search {item!r} must be KEY=V1,V2,... or KEY=LOW..HIGH, e.g. lr=0.001..0.1")
    low, dots, high = values.partition("..")
    return key.strip(), (low, high) if dots else values.split(",")


def _param(key: str, values: list | tuple) -> Param:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if key not in known or key in NOT_SEARCHED:
        raise CnnkitError(
            f"--search {key} is not a setting a sweep can search; choose among: "
            + ", ".join(sorted(known - set(NOT_SEARCHED)))
        )
    if not isinstance(values, (list, tuple)):
        raise CnnkitError(
            f"search {key}: give a list of values to choose from, e.g. [{values!r}, ...], or a (low, high) range; "
            f"got {values!r}"
        )
    if isinstance(values, list):
        choices = tuple(dict.fromkeys(coerce(key, v.strip() if isinstance(v, str) else v) for v in values))
        return Param(key, choices=choices)
    if field_type(key) not in (int, float) or len(values) != 2:
        raise CnnkitError(f"--search {key} takes values to choose from (V1,V2,...); a range is for numbers")
    ends = [coerce(key, v) for v in values]
    if not all(isinstance(end, (int, float)) for end in ends):  # lr's auto, or a None: values, not a range's ends
        raise CnnkitError(f"--search {key}: a range's ends must be numbers, got {values[0]!r}..{values[1]!r}")
    low, high = (float(end) for end in ends)
    if not low < high:
        raise CnnkitError(f"--search {key}={low}..{high}: the range's low end must be below its high end")
    return Param(key, low=low, high=high)


def grid_points(params: list[Param]) -> list[dict]:
    ranged = [p.key for p in params if not p.choices]
    if ranged:
        raise CnnkitError(f"a grid needs values to list for {', '.join(ranged)}: use --method random or tpe")
    return [
        dict(zip([p.key for p in params], point, strict=True))
        for point in itertools.product(*(p.choices for p in params))
    ]


def random_points(params: list[Param], trials: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{p.key: p.draw(rng) for p in params} for _ in range(trials)]


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise CnnkitError("--method tpe needs Optuna: pip install 'cnnkit[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is a run that speaks for itself
    return optuna
