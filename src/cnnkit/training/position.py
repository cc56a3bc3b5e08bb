"""Where training stands: the position inside an epoch (with its check for a loss or weights gone
non-finite), and each process's own random state, which a checkpoint holds beside the weights and optimiser."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cnnkit.core.machine import Machine
from cnnkit.training.stopping import TrainingDiverged


@dataclass
class Position:
    """Where training stands inside an epoch: with weights, optimiser and RNG states, all a resume needs."""

    epoch: int = 1
    step: int = 0  # batches of this epoch done
    order: torch.Tensor | None = None  # this epoch's shuffled order of the training images
    loss_sum: torch.Tensor | float = 0.0  # running sums stay on the device: reading them each step stalls a GPU
    correct: torch.Tensor | int = 0
    seen: int = 0
    seconds: float = 0.0
    lr: float = 0.0  # the learning rate the epoch started with
    first_bad_step: torch.Tensor | int = -1  # the first step whose loss was not finite
    rates: list[list[float]] = field(default_factory=list)  # [step of the run, the rate it took] for each step

    def record(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        bad = torch.as_tensor(self.first_bad_step, device=loss.device)  # recorded on the device: no sync
        self.first_bad_step = torch.where((bad < 0) & ~loss.isfinite(), self.step, bad)
        self.loss_sum = self.loss_sum + loss * len(labels)
        self.correct = self.correct + (logits.argmax(1) == labels).sum()
        self.seen += len(labels)
        self.step += 1


def check_finite(pos: Position, model: torch.nn.Module, machine: Machine) -> None:
    """Stop on a non-finite loss, or on weights gone non-finite while such steps were skipped: nothing
    poisoned is ever checkpointed or kept. One device sync, at checkpoints and epoch ends only."""
    bad = int(pos.first_bad_step)
    weights_bad = not bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all())
    if not machine.any_rank(bad >= 0 or weights_bad):  # every process stops together, whichever saw it
        return
    if bad >= 0:
        what = f"the training loss became NaN or infinite at epoch {pos.epoch}, step {bad + 1}"
    elif weights_bad:
        what = f"the weights became NaN or infinite by epoch {pos.epoch}, step {pos.step}"
    else:
        what = f"training on another process became NaN or infinite at epoch {pos.epoch}"
    raise TrainingDiverged(what, machine.bf16)


def restore_rng(rng: dict, data: torch.Generator, machine: Machine, seed_and_step: tuple[int, int]) -> None:
    """Put back a checkpoint's random states: the data's generator (the same on every process) and this
    process's own model RNG (dropout); a process the checkpoint did not have seeds one from the seed, its rank
    and the step."""
    data.set_state(rng["data"])
    cpu_state = own_rng(rng["torch"], machine.rank)
    if cpu_state is None:
        torch.manual_seed(hash((*seed_and_step, machine.rank)) % 2**63)
        return
    torch.set_rng_state(cpu_state)
    cuda_state = own_rng(rng["cuda"], machine.rank) if machine.device.type == "cuda" and len(rng["cuda"]) else None
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, machine.device)


def own_rng(states: torch.Tensor | list, rank: int) -> torch.Tensor | None:
    """Process `rank`'s row of a checkpoint's RNG states (one row per process; a single state in checkpoints
    from before several processes), or None for a process the checkpoint did not have."""
    rows = torch.stack(states) if isinstance(states, list) else states if states.ndim == 2 else states[None]
    return rows[rank].clone() if rank < len(rows) else None  # a copy: set_rng_state reads from its storage start
