"""End to end through the Python API, on real data: train, the run folder, repeat, eval, predict, load."""

from __future__ import annotations

import csv
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_image
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import cnnkit
from cnnkit import CnnkitError, TrainConfig

SUMMARY_KEYS = {
    "test_accuracy",
    "test_loss",
    "per_class_accuracy",
    "test_balanced_accuracy",
    "test_macro_f1",
    "per_class",
    "confusion_matrix",
    "classes",
    "epochs",
    "train_seconds",
    "num_parameters",
}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The main job exactly as `cnnkit train` runs it: every default."""
    return cnnkit.train(report=False, out=str(tmp_path_factory.mktemp("runs") / "digits"))


def test_default_run_is_accurate_and_writes_its_folder(digits_run):
    summary = json.loads((digits_run.dir / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.97
    assert SUMMARY_KEYS <= set(summary)
    assert summary["classes"] == [str(i) for i in range(10)] and summary["steps"] > 0
    assert np.array(summary["confusion_matrix"]).sum() == summary["num_test_images"]
    rows = list(csv.DictReader(open(digits_run.dir / "metrics.csv")))
    passes = -(-summary["steps"] // (summary["num_train_images"] // digits_run.config.batch_size))
    assert [int(r["epoch"]) for r in rows] == list(range(1, passes + 1))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    weights = load_file(str(digits_run.dir / "weights.safetensors"))
    assert set(weights) == set(digits_run.model.state_dict())  # plain names, no wrapper prefixes
    config = TrainConfig.from_yaml(digits_run.dir / "config.yaml")
    assert (config.data, config.model, config.translate, config.flip) == ("digits", "fastcnn-small", 1, False)


def test_repeating_a_run_from_its_config_is_identical_on_cpu(digits_run, tmp_path):
    config = TrainConfig.from_yaml(digits_run.dir / "config.yaml")
    again = cnnkit.train(config, out=str(tmp_path / "again"))
    first, second = (load_file(str(r.dir / "weights.safetensors")) for r in (digits_run, again))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert again.summary.test_accuracy == digits_run.summary.test_accuracy


def test_eval_recomputes_the_saved_test_metrics(digits_run):
    metrics = cnnkit.load(digits_run.dir).evaluate()
    assert metrics["test_accuracy"] == pytest.approx(digits_run.summary.test_accuracy)
    assert metrics["confusion_matrix"] == digits_run.summary.confusion_matrix


def test_predict_classifies_image_files_like_the_test_set(digits_run, tmp_path):
    from cnnkit.data import load_data

    test = load_data("digits").splits["test"]
    paths = [save_image(tmp_path / f"{i}.png", test.images[i, 0].numpy()) for i in range(60)]
    results = cnnkit.load(digits_run.dir).predict(paths, top_k=3)
    assert [r["path"] for r in results] == [str(p) for p in paths]
    probabilities = [[p["probability"] for p in r["predictions"]] for r in results]
    assert all(len(p) == 3 and p == sorted(p, reverse=True) and sum(p) <= 1.0001 for p in probabilities)
    hits = sum(r["predictions"][0]["class"] == str(int(test.labels[i])) for i, r in enumerate(results))
    assert hits >= 55


def test_predict_refuses_missing_and_broken_files(digits_run, tmp_path):
    run = cnnkit.load(digits_run.dir)
    with pytest.raises(CnnkitError, match="does not exist"):
        run.predict([tmp_path / "nope.png"])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(CnnkitError, match="cannot decode image .*bad.png") as refused:
        run.predict([tmp_path / "bad.png"])
    assert "not a PNG, JPEG, BMP, WebP, GIF or TIFF file" in str(refused.value)  # not PIL's "<_io.BytesIO ...>"


@pytest.mark.slow
def test_mnist_one_epoch_at_the_rate_lr_auto_finds_reaches_98_5_percent(shared_data, tmp_path):
    run = cnnkit.train(
        lr="auto", data="mnist", data_dir=str(shared_data), model="simplecnn", epochs=1, out=str(tmp_path / "m")
    )
    assert 1e-4 < run.config.lr < 0.1  # the range test's rate, in config.yaml
    assert run.summary.test_accuracy >= 0.985
    page = (run.dir / "report.html").read_text()  # the report of an MNIST run, its range test drawn
    assert "Learning-rate range test" in page and "<h2>Test images" in page
    assert run.evaluate()["test_accuracy"] == pytest.approx(run.summary.test_accuracy)


@pytest.mark.slow
def test_cifar_jpeg_folder_beats_the_tutorial_with_lenet(shared_data, tmp_path):
    run = cnnkit.train(
        report=False, data=str(shared_data / "cifar10-jpeg"), model="lenet", epochs=2, out=str(tmp_path / "c")
    )
    assert run.summary.test_accuracy > 0.5335  # the PyTorch tutorial's figure for this net and budget
    assert run.summary.classes[0] == "airplane" and run.summary.num_test_images == 10000


def test_image_folder_trains_and_predicts(image_folder, tmp_path):
    run = cnnkit.train(
        report=False, data=str(image_folder), model="small-cnn", epochs=8, out=str(tmp_path / "f"), seed=1
    )
    assert run.summary.test_accuracy >= 0.9  # bars against rings: easy, if the pipeline is right
    ring = next((image_folder / "ring").glob("*.webp"))
    assert run.predict([ring], top_k=1)[0]["predictions"][0]["class"] == "ring"


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))

    def forward(self, x):
        return self.body(x)


def test_any_nn_module_trains_and_loads_back(tmp_path):
    run = cnnkit.train(report=False, model=TinyNet(), epochs=2, out=str(tmp_path / "custom"))
    assert (run.summary.model, run.summary.module) == ("custom", "TinyNet")
    with pytest.raises(CnnkitError, match=r"custom nn.Module \(TinyNet\).*model=TinyNet"):
        cnnkit.load(run.dir)
    loaded = cnnkit.load(run.dir, model=TinyNet())
    assert loaded.evaluate()["test_accuracy"] == pytest.approx(run.summary.test_accuracy)


def test_existing_run_folders_are_never_overwritten(digits_run, tmp_path):
    with pytest.raises(CnnkitError, match="already holds files"):
        cnnkit.train(report=False, out=str(digits_run.dir))
    (tmp_path / "file").write_text("")
    with pytest.raises(CnnkitError, match="cannot write the run folder"):
        cnnkit.train(report=False, out=str(tmp_path / "file" / "run"))


def test_init_from_a_run_remakes_a_head_of_another_class_count(digits_run, tmp_path, capsys):
    from cnnkit.data import load_data

    test = load_data("digits").splits["train"]
    for i in range(len(test)):
        if int(test.labels[i]) < 3:  # a three-class folder of 8x8 digits
            save_image(tmp_path / "three" / str(int(test.labels[i])) / f"{i}.png", test.images[i, 0].numpy())
    run = cnnkit.train(
        report=False, data=str(tmp_path / "three"), init_from=str(digits_run.dir), epochs=2, out=str(tmp_path / "ft")
    )
    assert "made anew for the new classes: head.weight" in capsys.readouterr().out  # fastcnn's head has no bias
    assert run.summary.test_accuracy >= 0.95 and len(run.classes) == 3


def test_init_from_another_architecture_says_what_differs(digits_run, tmp_path):
    with pytest.raises(
        CnnkitError,
        match=r"do not fit this model: missing features.0.weight; missing features.0.bias",
    ):
        cnnkit.train(report=False, model="small-cnn", init_from=str(digits_run.dir), epochs=1, out=str(tmp_path / "x"))


def digits_folder(root, classes, mode="RGB"):
    """Some of the digits' test images as files of another mode, one sub-folder per class."""
    from cnnkit.data import load_data

    test = load_data("digits").splits["test"]
    for i in range(len(test)):
        label = str(int(test.labels[i]))
        if label in classes:
            path = root / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(test.images[i, 0].numpy()).convert(mode).save(path)
    return root


def test_evaluate_on_other_data_maps_its_classes_and_channels(digits_run, tmp_path):
    run = cnnkit.load(digits_run.dir)
    colour = digits_folder(tmp_path / "colour", {"3", "5", "8"})  # RGB files, three of the ten classes
    metrics = run.evaluate(data=str(colour))
    assert metrics["classes"] == run.classes and metrics["num_test_images"] > 20
    counts = np.array(metrics["confusion_matrix"]).sum(1)
    assert set(np.flatnonzero(counts)) == {3, 5, 8}  # each test image counted under its own class
    assert metrics["test_accuracy"] >= 0.85
    digits_folder(tmp_path / "letters", {"3"})
    (tmp_path / "letters" / "x").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "letters" / "x" / "1.png")
    with pytest.raises(CnnkitError, match="has classes this run never saw: x"):
        run.evaluate(data=str(tmp_path / "letters"))


def test_predict_images_in_memory_matches_predict_on_files(digits_run, tmp_path):
    from cnnkit.data import load_data

    run = cnnkit.load(digits_run.dir)
    test = load_data("digits").splits["test"]
    paths = [save_image(tmp_path / f"{i}.png", test.images[i, 0].numpy()) for i in range(8)]
    from_files = [r["predictions"] for r in run.predict(paths, top_k=2)]
    as_pil = [Image.open(p) for p in paths]
    assert run.predict_images(as_pil, top_k=2) == from_files
    assert run.predict_images(test.images[:8], top_k=2) == from_files  # a uint8 batch
    assert run.predict_images(list(test.images[:8].expand(-1, 3, -1, -1)), top_k=2) == from_files  # grey as RGB
    with pytest.raises(CnnkitError, match=r"uint8 tensors .* got a torch.float32 tensor of shape \(1, 8, 8\)"):
        run.predict_images([torch.zeros(1, 8, 8)])
    assert run.predict_images(as_pil[0], top_k=2) == from_files[:1]  # one image alone: a list of one
    assert run.predict_images(test.images[0], top_k=2) == from_files[:1]
    for empty in (Image.new("L", (0, 0)), Image.new("RGB", (5, 0)), torch.zeros(3, 0, 4, dtype=torch.uint8)):
        with pytest.raises(CnnkitError, match="an empty image .* has nothing to classify"):
            run.predict_images([empty])


def test_the_inference_model_takes_raw_pixels_and_gives_probabilities(digits_run):
    from cnnkit.data import load_data

    run = cnnkit.load(digits_run.dir)
    images = load_data("digits", image_size=run.info.image_size).splits["test"].images[:16]
    with torch.no_grad():
        probabilities = run.inference_model()(images)
        expected = run.model(
            (images.float() / 255 - torch.tensor(run.info.mean).view(1, -1, 1, 1))
            / torch.tensor(run.info.std).view(1, -1, 1, 1)
        ).softmax(1)
    assert probabilities.shape == (16, 10) and torch.allclose(probabilities, expected, atol=1e-5)
    assert set(run.inference_model().state_dict()) >= {"preprocess.scale", "preprocess.shift"}


def test_the_summary_says_where_its_figures_came_from(digits_run):
    import subprocess

    summary = digits_run.summary
    assert summary.torch_version == torch.__version__ and summary.torchvision_version == version("torchvision")
    assert summary.device == "cpu" and summary.device_name
    checkout = Path(cnnkit.__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        pytest.skip("cnnkit is installed, not running from a checkout: no commit to record")
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert summary.git_commit.removesuffix("-dirty") == head.strip()


def test_auto_named_run_folders_never_collide(tmp_path, monkeypatch):
    from cnnkit.runs.folder import new_run_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("cnnkit.runs.folder.time.strftime", lambda fmt: "20260101-120000")  # two runs in one second
    made = [new_run_dir(None, "digits-simplecnn") for _ in range(3)]
    assert all(created for _, created in made)
    assert [path.name for path, _ in made] == [
        "digits-simplecnn-20260101-120000",
        "digits-simplecnn-20260101-120000-2",
        "digits-simplecnn-20260101-120000-3",
    ]


class Scaled(nn.Module):
    """A registered model with its own normalisation and input size, as a pretrained backbone has."""

    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(8 * 12 * 12, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def test_a_models_own_input_size_and_normalisation_are_used_and_stored(tmp_path, monkeypatch):
    from cnnkit.models import model_spec

    registry = cnnkit.models.registry
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))  # registered for this test only

    @cnnkit.register(
        "test-scaled", first_conv="features.0", input_size=12, mean=(0.25,), std=(0.5,), init_options=("pretrained",)
    )
    def scaled(in_channels, num_classes, image_size, pretrained: bool = False):
        return Scaled(in_channels, num_classes)

    run = cnnkit.train(report=False, model="test-scaled", epochs=2, out=str(tmp_path / "run"))
    info = json.loads((run.dir / "model.json").read_text())
    assert (info["image_size"], info["mean"], info["std"]) == (12, [0.25], [0.5])
    assert run.summary.test_accuracy > 0.8
    spec = model_spec("test-scaled")
    assert spec.architecture({"pretrained": True}) == {}  # initialisation only: never stored, never re-run on load
