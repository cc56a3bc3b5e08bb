"""A run's whole prediction as one module: uint8 images in, class probabilities out. `cnnkit predict`,
`cnnkit export` and a server all run this one module, so they cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.core.errors import require_extra
from cnnkit.core.progress import bar
from cnnkit.data.ondisk import DiskImages
from cnnkit.data.preprocess import Preprocess, laid_out


class Classifier(nn.Module):
    """uint8 (N, C, H, W) images of the run's channels and size -> (N, classes) probabilities, in float32:
    the run's preprocessing, its network and, when it tests that way, test-time augmentation."""

    def __init__(self, preprocess: Preprocess, model: nn.Module, tta: bool):
        super().__init__()
        self.preprocess, self.model, self.tta = preprocess, model, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        logits = six_view_logits(self.model, x, self.preprocess.memory_format) if self.tta else self.model(x)
        return logits.float().softmax(1)


def six_view_logits(model: nn.Module, images: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """Each image's logits averaged over six views (airbench): the image and two copies shifted by one pixel
    (up-left, down-right), each with its mirror image; the unshifted pair counts half. A free gain for data
    whose classes do not depend on left and right (photos, not digits)."""
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    h, w = images.shape[-2:]
    shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
    views = [_mirror_average(model, v, memory_format) for v in (images, *shifted)]
    return (views[0] + (views[1] + views[2]) / 2) / 2


def _mirror_average(model: nn.Module, images: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    # every view in the batches' own memory layout: a compiled model would recompile for other strides
    views = [laid_out(v.shape, v.device, memory_format).copy_(v) for v in (images, images.flip(3))]
    return sum(model(v).float() for v in views) / 2


def probabilities_of(
    classifier: nn.Module, images: torch.Tensor | DiskImages, batch: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A classifier's (N, classes) probabilities for uint8 images (N, C, H, W), in memory or on disk, `batch` at
    a time on `device`, back on the CPU."""
    parts = []
    with torch.no_grad(), bar(len(images), "predicting", "img") as shown:
        for start in range(0, len(images), batch):
            parts.append(classifier(images[start : start + batch].to(device)).cpu())
            shown.update(len(parts[-1]))
    return torch.cat(parts)


class OnnxClassifier(nn.Module):
    """An ONNX file of a whole prediction (`cnnkit export`, or an int8 model from `cnnkit compress`) run by
    onnxruntime on the CPU, as a module with the Classifier's contract: uint8 images in, probabilities out."""

    def __init__(self, path: Path):
        super().__init__()
        require_extra(f"running {path}", "export", "onnxruntime")
        import onnxruntime

        self.path = path
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"images": images.cpu().contiguous().numpy()})[0])


def onnx_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's metadata (its `metadata_props`), read by onnxruntime without optimising the graph."""
    require_extra(f"reading {path}", "export", "onnxruntime")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # read, not run
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)
