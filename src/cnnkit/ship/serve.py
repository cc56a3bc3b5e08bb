"""`cnnkit serve`: a run behind HTTP. POST an image file's bytes to /predict and get its top classes as JSON;
GET /health says what is served. Requests that arrive together are predicted as one batch. FastAPI and
uvicorn are the optional extra `cnnkit[serve]`; with onnxruntime installed and RUN/model.onnx exported, the
ONNX model answers, else the run's own `Classifier`: the same probabilities either way (`cnnkit export`)."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations (Request) as real classes

import asyncio
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from cnnkit.core.errors import require_extra
from cnnkit.data.images import DECODE_ERRORS, decode_bytes
from cnnkit.models.inference import OnnxClassifier
from cnnkit.runs.run import Run
from cnnkit.ship.export import FORMATS

if TYPE_CHECKING:
    from fastapi import FastAPI

MAX_BYTES = 10 * 2**20  # the largest upload taken; a photo from a phone is 2-5 MB
MAX_BATCH = 64  # requests predicted in one forward pass, at most
WAIT_SECONDS = 0.005  # how long a batch's first request waits for others to join it: a batch costs little more
Predict = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, C, H, W) -> (N, classes) probabilities


class Batcher:
    """Images queued by concurrent requests and predicted together, off the event loop; it counts the batches
    and the largest one (what /health reports)."""

    def __init__(self, predict: Predict):
        self.predict, self.batches, self.largest = predict, 0, 0
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.task is None:  # started by the first request, on the server's own event loop
            self.task = asyncio.create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, future))
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            deadline = loop.time() + WAIT_SECONDS
            while len(waiting) < MAX_BATCH and (left := deadline - loop.time()) > 0:
                try:
                    waiting.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            self.batches, self.largest = self.batches + 1, max(self.largest, len(waiting))
            try:
                probabilities = await asyncio.to_thread(self.predict, torch.stack([image for image, _ in waiting]))
            except Exception as error:  # every request of the batch gets the error; the server goes on
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), row in zip(waiting, probabilities, strict=True):
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(row)


def predictor(run: Run) -> tuple[str, Predict]:
    """(engine, predict): onnxruntime on RUN/model.onnx when both are there (always for an int8 run), else the
    run's own Classifier."""
    onnx = run.dir / FORMATS["onnx"]
    if run.quantized:
        return "onnxruntime", run.inference_model()
    if onnx.is_file() and importlib.util.find_spec("onnxruntime") is not None:
        return "onnxruntime", OnnxClassifier(onnx)
    classifier = run.inference_model()

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        return classifier(images.to(run.machine.device)).cpu()

    return "torch", predict


def decode_upload(body: bytes, run: Run) -> torch.Tensor:
    """An uploaded file's bytes as the run's input image; a ValueError says what is wrong with them."""
    try:
        return decode_bytes(body, run.info.image_size, run.info.in_channels, run.info.resize)
    except DECODE_ERRORS as e:
        raise ValueError(f"the body is not an image this server can read ({type(e).__name__}: {e})") from None


def create_app(run: Run, top_k: int = 3, max_bytes: int = MAX_BYTES) -> "FastAPI":
    """The server's routes: POST /predict (an image file's bytes as the body), GET /health."""
    require_extra("cnnkit serve", "serve", "fastapi", "uvicorn")
    from fastapi import FastAPI, HTTPException, Request

    engine, predict = predictor(run)
    batcher = Batcher(predict)
    app = FastAPI(title=f"cnnkit: {run.dir.name}", description="POST an image file's bytes to /predict")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "run": run.dir.name, "engine": engine, "classes": run.classes,
                "batches": batcher.batches, "largest_batch": batcher.largest}  # fmt: skip

    @app.post("/predict")
    async def predict_image(request: Request) -> dict:
        body = await _read_body(request, max_bytes)
        try:
            image = await asyncio.to_thread(decode_upload, body, run)
        except ValueError as e:
            raise HTTPException(415, str(e)) from None
        probabilities = await batcher(image)
        top = probabilities.topk(min(top_k, len(run.classes)))
        return {"predictions": [{"class": run.classes[i], "probability": round(p, 6)}
                                for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]}  # fmt: skip

    return app


async def _read_body(request, max_bytes: int) -> bytes:
    """The request's body, refused (413) as soon as it is past `max_bytes`, and (400) when empty."""
    from fastapi import HTTPException

    declared = request.headers.get("content-length", "0")
    if not declared.isdigit():
        raise HTTPException(400, "Content-Length must be a whole number of bytes")
    too_large = HTTPException(413, f"the image is over the {max_bytes:,}-byte limit of this server (--max-mb)")
    if int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    if not body:
        message = "the body is empty: POST the image file's bytes, e.g. curl --data-binary @cat.jpg URL/predict"
        raise HTTPException(400, message)
    return bytes(body)
