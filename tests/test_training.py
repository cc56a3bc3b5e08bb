"""Learning-rate schedules, the optimiser's parameter groups, the training step and the callbacks on the loop."""

from __future__ import annotations

import pytest
import torch

import cnnkit
from cnnkit import CnnkitError, TrainConfig, create_model
from cnnkit.models import model_spec
from cnnkit.training.optimizers import build_optimizer
from cnnkit.training.schedule import lr_factor


def curve(schedule: str, warmup: float, total: int = 100) -> list[float]:
    return [lr_factor(schedule, warmup, total, step) for step in range(total)]


def test_onecycle_warms_up_to_the_peak_then_falls_to_zero():
    c = curve("onecycle", 0.25)
    assert c[0] == pytest.approx(0.04 + 0.96 / 25)
    assert max(c) == 1.0 and c.index(1.0) == 24
    assert c[-1] < 0.02 and all(a >= b for a, b in zip(c[24:], c[25:], strict=False))


def test_a_bent_onecycle_decay_falls_from_each_bend_to_zero_at_the_new_end():
    bends = ((50, 100), (70, 80))  # as --budget's later plans leave them: where each bent, and the end until then
    c = [lr_factor("onecycle", 25 / 90, 90, step, bends) for step in range(91)]  # 25 warm-up steps, as planned
    assert c[:50] == [lr_factor("onecycle", 25 / 100, 100, step) for step in range(50)]  # as the run took them
    assert c[50:70] == [lr_factor("onecycle", 25 / 80, 80, step, bends[:1]) for step in range(50, 70)]
    assert c[25] == 1.0 and c[50] == pytest.approx(2 / 3) and c[70] == pytest.approx(2 / 9)
    assert c[80] == pytest.approx(1 / 9) and c[90] == 0.0  # then straight down to zero at the last end


def test_bends_that_no_budget_could_have_written_are_refused():
    for bends in ("50:100,40:100", "120:150", "50:40"):  # steps falling; past the run's end; past its own end
        with pytest.raises(CnnkitError, match=f"--bends {bends} must be as --budget writes them"):
            TrainConfig(steps=100, bends=bends)
    with pytest.raises(CnnkitError, match="--bends 50:100 must be as --budget writes them"):
        TrainConfig(steps=100, schedule="cosine", bends="50:100")
    with pytest.raises(CnnkitError, match="must be STEP:END pairs"):
        TrainConfig(steps=100, bends="50:0.3")


def test_cosine_step_and_constant_shapes():
    cos = curve("cosine", 0.0)
    assert cos[0] == 1.0 and cos[50] == pytest.approx(0.5) and cos[-1] < 0.01
    step = curve("step", 0.0)
    assert (step[0], step[50], step[75]) == (1.0, pytest.approx(0.1), pytest.approx(0.01))
    assert curve("constant", 0.0) == [1.0] * 100
    assert curve("constant", 0.1)[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])


def test_weight_decay_spares_biases_and_norms():
    model, spec = create_model("resnet9-small", 3, 10, 32), model_spec("resnet9-small")
    for name in ("sgd", "adam", "adamw", "rmsprop"):
        optimizer = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.1, nesterov=True), spec)
        decayed, spared = optimizer.param_groups
        assert decayed["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
        assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in spared["params"])
    assert build_optimizer(model, TrainConfig(optimizer="sgd", nesterov=True), spec).defaults["nesterov"]


def test_the_classifier_head_can_have_its_own_rate():
    model = create_model("simplecnn", 1, 10, 28)
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, head_lr=0.1), model_spec("simplecnn"))
    head = optimizer.param_groups[-1]
    assert head["lr"] == 0.1 and {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


class Recorder(cnnkit.Callback):
    """Counts what the loop tells it, and ends training early at a given step, as an early stop would."""

    def __init__(self, stop_after_steps: int | None = None):
        self.steps, self.losses, self.epochs, self.ended = 0, [], [], False
        self.stop_after_steps = stop_after_steps

    def on_step_end(self, trainer, loss):
        self.steps += 1
        self.losses.append(float(loss))
        if self.steps == self.stop_after_steps:
            trainer.stop_training = True

    def on_epoch_end(self, trainer, result):
        self.epochs.append(result)

    def on_train_end(self, trainer):
        self.ended = True


def test_callbacks_see_every_step_and_epoch(tmp_path):
    recorder = Recorder()
    run = cnnkit.train(report=False, epochs=2, batch_size=64, callbacks=[recorder], out=str(tmp_path / "run"))
    steps_per_epoch = run.summary.num_train_images // 64
    assert recorder.steps == 2 * steps_per_epoch and recorder.ended
    assert [r.epoch for r in recorder.epochs] == [1, 2]
    assert recorder.epochs[0].train_loss == pytest.approx(
        sum(recorder.losses[:steps_per_epoch]) / steps_per_epoch, rel=1e-3
    )


def test_a_callback_can_end_training_early_and_the_run_still_tests_and_saves(tmp_path):
    recorder = Recorder(stop_after_steps=5)
    run = cnnkit.train(report=False, epochs=3, callbacks=[recorder], out=str(tmp_path / "run"))
    assert recorder.steps == 5 and len(recorder.epochs) == 1
    assert len((run.dir / "metrics.csv").read_text().splitlines()) == 2  # header and the one (short) epoch
    assert 0 < run.summary.test_accuracy <= 1


def test_train_steps_reuse_one_function_and_keep_the_running_sums():
    from cnnkit.core.machine import pick_machine
    from cnnkit.data import load_data
    from cnnkit.data.loader import DeviceBatches
    from cnnkit.data.preprocess import Preprocess
    from cnnkit.training.trainer import Trainer

    data = load_data("digits")
    train = DeviceBatches(data.splits["train"], 100, Preprocess(data.mean, data.std), sampler="uniform")
    torch.manual_seed(0)
    trainer = Trainer(
        create_model("small-cnn", 1, 10, 8),
        model_spec("small-cnn"),
        train,
        TrainConfig(epochs=1),
        pick_machine("cpu", "fp32"),
    )
    images, labels = next(iter(train))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.train_step(images, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert (
        trainer.pos.step == 1
        and trainer.pos.seen == 100
        and float(trainer.pos.loss_sum) == pytest.approx(100 * float(loss))
    )
    assert any(
        not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)
    )  # the weights moved


def test_stop_on_signals_off_the_main_thread_leaves_handlers_alone_and_still_stops():
    import signal
    import threading

    from cnnkit.training.stopping import stop_on_signals

    original = signal.getsignal(signal.SIGINT)
    seen = {}

    def in_a_thread():
        with stop_on_signals() as stop:
            seen["handler"] = signal.getsignal(signal.SIGINT)
            stop.set()  # the caller's own way to ask for a stop
            seen["stop"] = stop.is_set()

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == {"handler": original, "stop": True}
    with stop_on_signals():  # on the main thread, Ctrl-C is taken over for the run and given back after
        assert signal.getsignal(signal.SIGINT) is not original
    assert signal.getsignal(signal.SIGINT) is original


def test_a_run_trains_off_the_main_thread(tmp_path):
    import threading

    runs = []
    thread = threading.Thread(
        target=lambda: runs.append(cnnkit.train(report=False, epochs=1, out=str(tmp_path / "run")))
    )
    thread.start()
    thread.join()
    assert runs and runs[0].summary.test_accuracy > 0.5
