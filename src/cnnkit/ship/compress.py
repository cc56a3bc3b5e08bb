"""`cnnkit compress`: a smaller version of a trained run, in a run folder of its own, measured beside the
original (`footprint`): int8 (static quantisation by onnxruntime, calibrated on training images) or pruned
(the smallest weights set to zero, then a short fine-tune that keeps them at zero)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

from cnnkit.core.errors import CnnkitError, require_extra
from cnnkit.core.files import atomic_write
from cnnkit.core.progress import say
from cnnkit.models import AUTO
from cnnkit.runs.folder import CONFIG, METRICS, MODEL_INFO, ONNX, RATES, SUMMARY, WEIGHTS, RunFolder
from cnnkit.runs.records import RunSummary
from cnnkit.runs.run import Run, load
from cnnkit.session.train import train
from cnnkit.settings.config import TrainConfig
from cnnkit.ship.export import export_run
from cnnkit.ship.footprint import footprint
from cnnkit.training.pruning import sparsity

CALIBRATION_IMAGES = 512  # training images whose activations set the int8 ranges
CALIBRATION_BATCH = 32
# the layers with weights, and what runs between them, so that activations stay int8 from one to the next
# (1.3x faster than convs alone on resnet9-small, 1.7-2.4x faster than float); softmax stays float
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Add"]
ACCURACY_LOST = 0.01  # a smaller model this much less accurate than its run is warned of, not just shown
FINE_TUNE_STEPS = 0.1  # a pruned fine-tune's steps, as a share of the run's own: mending, not training anew
FINE_TUNE_RATE = 0.1  # its peak rates, as a share of the run's own, decaying from the first step


def quantize(run: Run, out: Path | None = None, calibration_images: int = CALIBRATION_IMAGES) -> Run:
    """`run` (loaded on the CPU) as an int8 run folder: its whole prediction exported to ONNX (with the export's
    parity check), quantised statically with ranges calibrated on training images."""
    run.network("compress again")
    require_extra("int8 quantisation", "export", "onnx", "onnxscript", "onnx_ir", "onnxruntime")
    if calibration_images < 1:
        raise CnnkitError(f"--calibration-images {calibration_images} must be at least 1")
    # the folder first: one that holds files is refused before any work
    with (
        tempfile.TemporaryDirectory() as scratch,
        RunFolder.create(str(out or _beside(run, "int8")), "", run.machine) as folder,
    ):
        try:
            quantized = _int8_onnx(run, Path(scratch), _sample(run, calibration_images))
            return _write_int8(run, folder, quantized, calibration_images)
        except BaseException:  # a folder half written is no run: it goes (or stays empty, if it was yours)
            for name in (METRICS, RATES, ONNX, SUMMARY):
                (folder / name).unlink(missing_ok=True)
            folder.abandon()
            raise


def _write_int8(run: Run, folder: RunFolder, quantized: Path, calibration_images: int) -> Run:
    for name in (CONFIG, METRICS, RATES):  # how its weights were trained
        folder.write_text(name, (run.dir / name).read_text())
    origin = {"from": str(run.dir.resolve()), "calibration_images": calibration_images, "ops": QUANTIZED_OPS}
    folder.write_json(MODEL_INFO, {**run.info.to_json(), "quantized": origin})
    atomic_write(folder / ONNX, lambda tmp: tmp.write_bytes(quantized.read_bytes()))
    int8 = load(folder.path, device="cpu")
    record = _record(run, int8, "int8", **origin)
    advice = "try more --calibration-images, or ship the float model (cnnkit export)"
    # the run's summary, with the int8 model's test results
    folder.write_json(SUMMARY, _with(record, run.summary.with_test(int8.evaluate()), advice).to_json())
    return int8


def prune(run: Run, fraction: float, out: Path | None = None, steps: int | None = None) -> Run:
    """A fine-tune of `run` into a new run folder with `fraction` of its conv and linear weights at zero."""
    run.network("compress again")
    if not 0 < fraction < 1:
        raise CnnkitError(f"--prune {fraction} must be between 0 and 1: the share of weights set to zero, e.g. 0.5")
    if steps is not None and steps < 1:
        raise CnnkitError(f"--steps {steps} must be at least 1")
    cfg = _fine_tune(run, fraction, out or _beside(run, f"pruned{round(100 * fraction)}"), steps)
    tuned = train(cfg, model=run.model if run.info.module else None)
    pruned = load(tuned.dir, model=tuned.model if run.info.module else None, device="cpu")
    details = {"fraction": fraction, "sparsity": round(sparsity(pruned.model), 6), "fine_tune_steps": cfg.steps}
    record = _record(run, pruned, "pruned", **details)
    with RunFolder.reopen(pruned.dir, pruned.machine) as folder:
        folder.write_json(SUMMARY, _with(record, pruned.summary, "try a smaller --prune, or more --steps").to_json())
    return pruned


def _int8_onnx(run: Run, scratch: Path, calibration: torch.Tensor) -> Path:
    """The run's exported prediction, quantised to int8: weights per output channel, activations per tensor."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    exported = export_run(run, "onnx", scratch / "float.onnx").path
    prepared, quantized = scratch / "prepared.onnx", scratch / "int8.onnx"
    quant_pre_process(str(exported), str(prepared), skip_symbolic_shape=True)  # folds and infers shapes first
    batches = iter({"images": part.numpy()} for part in calibration.split(CALIBRATION_BATCH))
    say(f"calibrating int8 ranges on {len(calibration)} training images")
    quantize_static(
        str(prepared),
        str(quantized),
        _Reader(batches),
        quant_format=QuantFormat.QDQ,  # the portable form: runtimes fuse it into int8 kernels
        per_channel=True,  # a scale per filter: filters of very different sizes keep their precision
        op_types_to_quantize=QUANTIZED_OPS,
        activation_type=QuantType.QUInt8,  # uint8 activations with int8 weights: x86's fast int8 kernels (VNNI);
        weight_type=QuantType.QInt8,  # int8 with int8 runs 2-2.5x slower there (measured on resnet9-small)
        # weights in 7 bits: x86 CPUs without VNNI (AVX2 alone) add uint8 x int8 products in pairs into int16,
        # which saturates at full range (a digits run: 0.897 there, 0.916 with VNNI); 7 bits keep 0.916 on both
        reduce_range=True,
    )
    return _deduplicated(quantized, scratch / "deduplicated.onnx")


def _deduplicated(path: Path, out: Path) -> Path:
    """The model with each weight stored once: the folding of batch norms into convs gives every call of a conv
    its own copy (six with TTA's six views), which would make the int8 file larger than the float one."""
    import onnx_ir
    from onnx_ir.passes.common import DeduplicateHashedInitializersPass

    onnx_ir.save(DeduplicateHashedInitializersPass()(onnx_ir.load(path)).model, out)
    return out


class _Reader:
    """onnxruntime's calibration data reader: the next input, or None when there is no more."""

    def __init__(self, batches):
        self.batches = batches

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def _sample(run: Run, count: int) -> torch.Tensor:
    """`count` training images drawn by the run's seed, in the order they are stored (disk reads in order)."""
    train = run.split("train")
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(run.config.seed))[:count]
    return train.images[index.sort().values]


def _fine_tune(run: Run, fraction: float, out: Path, steps: int | None) -> TrainConfig:
    """The run's own recipe, started from its weights, pruned, for a tenth of its steps at a tenth of its rates."""
    cfg = run.config
    return dataclasses.replace(
        cfg,
        lr=cfg.lr if cfg.lr == AUTO else cfg.peak_lr * FINE_TUNE_RATE,
        head_lr=cfg.head_lr and cfg.head_lr * FINE_TUNE_RATE,
        muon_lr=cfg.muon_lr * FINE_TUNE_RATE,
        init_from=str(run.dir.resolve()),
        prune=fraction,
        steps=steps or max(1, round(FINE_TUNE_STEPS * (run.summary.steps or 1))),
        epochs=None,
        budget=None,
        preset=None,
        warmup=0.0,
        pretrained=False,
        pretrained_weights=None,
        freeze_epochs=0,
        out=str(out),
    )


def _record(original: Run, compressed: Run, method: str, **details) -> dict:
    """Both versions measured the same way, on the run's test split, on this CPU."""
    test = original.split("test")
    versions = {}
    for name, run in (("original", original), (method, compressed)):
        file = run.dir / (ONNX if run.quantized else WEIGHTS)
        say(f"measuring the {name} model: size, CPU latency, test accuracy")
        versions[name] = footprint(run.inference_model().cpu(), file, test)
    return {"method": method, "from": str(original.dir.resolve()), **details, "versions": versions}


def _with(record: dict, summary: RunSummary, advice: str) -> RunSummary:
    """`summary` with the record, and a warning (said, and kept in `warnings`) if compressing cost accuracy."""
    original, compressed = (record["versions"][name]["test_accuracy"] for name in ("original", record["method"]))
    warnings = list(summary.warnings)
    if original - compressed > ACCURACY_LOST:
        warnings.append(
            f"the {record['method']} model is {100 * (original - compressed):.1f} points less accurate on the test "
            f"images than the run it came from ({compressed:.4f} against {original:.4f}); {advice}"
        )
        say(f"warning: {warnings[-1]}")
    return dataclasses.replace(summary, warnings=warnings, compressed=record)


def _beside(run: Run, suffix: str) -> Path:
    return run.dir.parent / f"{run.dir.name}-{suffix}"
