"""`cnnkit serve`: a run behind HTTP. `POST /predict` takes an image in any common shape (`uploads.py`) and
answers its top classes as JSON; the Open Inference Protocol's routes (`oip.py`) answer the clients of Triton
and KServe; `GET /` is a page to drop an image on; `/docs` describes it all, offline. Images that arrive
together are predicted as one batch. Every request is bounded: its bytes, its pixels, the decodes at once,
the bodies held at once, and the time a client takes to send it. FastAPI and uvicorn are the optional extra
`cnnkit[serve]`; with onnxruntime installed and an up-to-date RUN/model.onnx, the ONNX model answers."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations (Request) as real classes

import asyncio
import importlib.util
import io
import json
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from typing import TYPE_CHECKING

import torch
from PIL import Image

from cnnkit.core.errors import CnnkitError, require_extra
from cnnkit.core.progress import utf8
from cnnkit.data.images import DECODE_ERRORS, decode_bytes
from cnnkit.models.inference import OnnxClassifier
from cnnkit.runs.run import Run
from cnnkit.ship.uploads import SHAPES, BodyBudget, Refused, Upload, uploads_in

if TYPE_CHECKING:
    from fastapi import FastAPI

MAX_BYTES = 10 * 2**20  # the largest upload taken; a photo from a phone is 2-5 MB
MAX_PIXELS = 24_000_000  # the most pixels an image may decode to (a 24 MP photo); a JPEG past it decodes smaller
HELD_BYTES = 256 * 2**20  # request bodies held at once, at most
SMALL_PIXELS = 2**20  # an image up to this decodes in its own lane: an ordinary upload never waits for a huge one
# decodes at once in each lane, each lane its own threads: what bounds the memory decodes take (glibc keeps what a
# thread freed for it: 24 uploads of a 23 MP PNG peaked at 1.57 GB with two such threads, 0.81 GB with one)
DECODES = {"small": 8, "large": 1}
MAX_BATCH = 64  # images predicted in one forward pass, at most
WAIT_SECONDS = 0.005  # how long a batch's first request waits for others to join it: a batch costs little more
REQUEST_SECONDS = 15.0  # a client has this long to send a request's headers and body (a slow one holds a socket)
CONNECTIONS = 512  # connections at once; past them a request gets a 503
Predict = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, C, H, W) -> (N, classes) probabilities
log = logging.getLogger("cnnkit.serve")


class Batcher:
    """Images queued by concurrent requests and predicted together, off the event loop, one batch at a time;
    it counts the batches and the largest one (what /health reports)."""

    def __init__(self, predict: Predict):
        self.predict, self.batches, self.largest = predict, 0, 0
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, classes) for a request's uint8 images (N, C, H, W)."""
        if self.loop is not asyncio.get_running_loop():  # started on the server's own event loop (a test's own)
            self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()
            self.task = self.loop.create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((images, future))
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            deadline = loop.time() + WAIT_SECONDS
            while sum(len(images) for images, _ in waiting) < MAX_BATCH and (left := deadline - loop.time()) > 0:
                try:
                    waiting.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            batch = torch.cat([images for images, _ in waiting])
            self.batches, self.largest = self.batches + 1, max(self.largest, len(batch))
            try:
                probabilities = await asyncio.to_thread(self.predict, batch)
            except Exception as error:  # every request of the batch gets the error; the server goes on
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            parts = probabilities.split([len(images) for images, _ in waiting])
            for (_, future), part in zip(waiting, parts, strict=True):
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(part)


class Engine:
    """What answers: a run's predictor behind a batcher, and its decoding, bounded."""

    def __init__(self, run: Run, max_pixels: int = MAX_PIXELS):
        self.run, self.max_pixels = run, max_pixels
        self.classes = [utf8(c) for c in run.classes]  # the names answers give
        self.engine, predict = predictor(run)
        self.batcher = Batcher(predict)
        self.lanes = {lane: ThreadPoolExecutor(n, f"decode-{lane}") for lane, n in DECODES.items()}

    async def decode(self, uploads: list[Upload]) -> torch.Tensor:
        """The uploads as the run's uint8 input images (N, C, H, W); a `Refused` names the first that is not."""
        return torch.stack(await asyncio.gather(*(self._decode(upload) for upload in uploads)))

    async def _decode(self, upload: Upload) -> torch.Tensor:
        lane = self.lanes["large" if _pixels(upload.data) > SMALL_PIXELS else "small"]
        return await asyncio.get_running_loop().run_in_executor(lane, self.decode_now, upload)

    def decode_now(self, upload: Upload) -> torch.Tensor:
        info = self.run.info
        try:
            return decode_bytes(upload.data, info.image_size, info.in_channels, info.resize, self.max_pixels)
        except Image.DecompressionBombError as e:
            raise Refused(413, f"{upload.name}: {e} (this server's --max-megapixels)") from None
        except DECODE_ERRORS as e:
            raise Refused(
                415, f"{upload.name} is not an image this server can read ({type(e).__name__}: {e}); {SHAPES}"
            ) from None

    async def answer(self, uploads: list[Upload]) -> torch.Tensor:
        """Probabilities (N, classes) for the uploads, predicted as one batch with whatever else is waiting."""
        return await self.batcher(await self.decode(uploads))


def _pixels(data: bytes) -> int:
    """The pixels an image file's header declares (0 when it has none PIL reads); the decode says what is wrong."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width * img.height
    except DECODE_ERRORS:
        return 0


def predictor(run: Run) -> tuple[str, Predict]:
    """(engine, predict): onnxruntime on RUN/model.onnx when it is installed and the export is of the run's weights
    now (always for an int8 run), else the run's own Classifier."""
    if run.quantized:
        return "onnxruntime", run.inference_model()
    if importlib.util.find_spec("onnxruntime") is not None and (onnx := run.exported_onnx()) is not None:
        return "onnxruntime", OnnxClassifier(onnx)
    classifier = run.inference_model()

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        return classifier(images.to(run.machine.device)).cpu()

    return "torch", predict


def top_classes(classes: list[str], probabilities: torch.Tensor, k: int) -> list[dict]:
    top = probabilities.topk(min(k, len(classes)))
    return [{"class": classes[i], "probability": round(p, 6)}
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]  # fmt: skip


def create_app(run: Run, top_k: int = 3, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> "FastAPI":
    """The server's routes: POST /predict, GET /health, GET / (the page), and the Open Inference Protocol's."""
    require_extra("cnnkit serve", "serve", "fastapi", "uvicorn", "fastapi_offline", "python_multipart")
    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi_offline import FastAPIOffline
    from starlette.requests import ClientDisconnect

    from cnnkit.ship.oip import add_inference_protocol

    engine, bodies = Engine(run, max_pixels), BodyBudget(HELD_BYTES)
    app = FastAPIOffline(title=f"cnnkit: {run.dir.name}", description=_DESCRIPTION, version="1")

    @app.exception_handler(Refused)
    def refused(request: Request, e: Refused) -> JSONResponse:
        if request.url.path.startswith("/v2/"):  # the protocol's own error shape
            return JSONResponse({"error": e.message}, e.status)
        return JSONResponse({"detail": e.message}, e.status)

    @app.exception_handler(ClientDisconnect)
    def went_away(request: Request, e: ClientDisconnect) -> JSONResponse:
        log.warning(f"a client ({_client(request)}) went away before its request ended")
        return JSONResponse({"detail": "the client went away"}, 400)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "run": utf8(run.dir.name), "engine": engine.engine, "classes": engine.classes,
                "batches": engine.batcher.batches, "largest_batch": engine.batcher.largest}  # fmt: skip

    @app.post("/predict", openapi_extra=_PREDICT_BODIES, response_model=None)
    async def predict_images(request: Request) -> dict:
        async with bodies.body(request, max_bytes) as body:
            uploads, listed = await uploads_in(request, body)
            probabilities = await engine.answer(uploads)
        answers = [top_classes(engine.classes, row, top_k) for row in probabilities]
        if not listed:
            return {"predictions": answers[0]}
        return {"results": [{"file": u.name, "predictions": a} for u, a in zip(uploads, answers, strict=True)]}

    page_html = _page(run)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return page_html

    add_inference_protocol(app, engine, bodies, max_bytes)
    return app


def _client(request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"


def _page(run: Run) -> str:
    """The page, with the run's name and classes as JSON (never as HTML: a class may be named `<script>`)."""
    facts = json.dumps({"run": run.dir.name, "classes": run.classes}).replace("<", "\\u003c")
    return files("cnnkit.ship").joinpath("page.html").read_text().replace("__FACTS__", facts)


_DESCRIPTION = (
    "POST an image to /predict: its bytes as the body, one or more files as a multipart form, or JSON with base64 "
    "images. The Open Inference Protocol (KServe v2) is under /v2. GET / is a page to drop an image on."
)
_BINARY = {"type": "string", "format": "binary"}
_TEXT = {"type": "string", "description": "an image file in base64"}
_PREDICT_BODIES = {  # what /docs shows and "Try it out" sends
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "array", "items": _BINARY}}}
            },
            "image/*": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string"},
                        "images": {"type": "array", "items": {"type": "string"}},
                    },
                }
            },
        },
    }
}


def serve(app: "FastAPI", host: str, port: int, said: Callable[[], None], seconds: float = REQUEST_SECONDS) -> None:
    """Serve `app` on host:port: the port bound first (a busy one is refused in one line), then `said()` (the
    line that says where), then uvicorn until Ctrl-C; each request has `seconds` to arrive."""
    import uvicorn

    try:
        listening = socket.create_server((host, port), family=_family(host), backlog=2048)
    except OSError as e:
        raise CnnkitError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host") from None
    config = uvicorn.Config(
        app, log_level="warning", http=_deadline_protocol(seconds), limit_concurrency=CONNECTIONS, timeout_keep_alive=5
    )
    said()
    uvicorn.Server(config).run(sockets=[listening])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _deadline_protocol(seconds: float) -> type:
    """uvicorn's HTTP/1.1 protocol with a clock: a request whose headers and body have not all arrived
    `seconds` after its connection opened (or its last answer went out) is closed, with one log line."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineProtocol(H11Protocol):
        clock: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._start_clock()

        def on_response_complete(self) -> None:
            self._start_clock()  # the next request's clock; uvicorn's keep-alive closes an idle one sooner
            super().on_response_complete()

        def handle_events(self) -> None:
            super().handle_events()
            cycle = self.cycle
            if self.clock and cycle is not None and not cycle.more_body and not cycle.response_complete:
                self.clock.cancel()  # the whole request is in

        def connection_lost(self, exc) -> None:
            if self.clock:
                self.clock.cancel()
            super().connection_lost(exc)

        def _start_clock(self) -> None:
            if self.clock:
                self.clock.cancel()
            self.clock = self.loop.call_later(seconds, self._too_slow)

        def _too_slow(self) -> None:
            if not self.transport.is_closing():
                client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
                log.warning(f"{client} took over {seconds:g}s to send its request: closed")
                self.transport.close()

    return DeadlineProtocol
