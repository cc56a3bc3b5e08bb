"""The Open Inference Protocol (KServe v2 REST), which Triton, KServe and Seldon speak, beside /predict: health,
metadata and `POST /v2/models/NAME/infer`. The one input is either `images`, UINT8 of the run's shape
(N, C, H, W), or BYTES (N) holding encoded image files; the answer is `probabilities`, FP32 (N, classes), and
`class`, BYTES (N), the top class's name. Tensors come as JSON or, as tritonclient sends them by default, in
the binary tensor extension (a JSON header, then the raw bytes); the classification extension (an output's
`classification: k`) answers "probability:index:name" for the top k, as Triton does."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations (Request) as real classes

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from cnnkit.core.version import __version__
from cnnkit.ship.export import model_name
from cnnkit.ship.uploads import MAX_FILES, BodyBudget, Refused, Upload, from_base64

if TYPE_CHECKING:
    from fastapi import FastAPI

    from cnnkit.ship.serve import Engine

OUTPUTS = ("probabilities", "class")
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary tensor extension's: the JSON's bytes, then tensors


@dataclass(frozen=True)
class Wanted:
    """An output the client asked for, and how: as binary data, and as the top `classification` classes."""

    name: str
    binary: bool
    classification: int = 0


def add_inference_protocol(app: "FastAPI", engine: "Engine", bodies: BodyBudget, max_bytes: int) -> None:
    from fastapi import Request, Response

    run = engine.run
    name = model_name(run.dir)  # as in the Triton export
    info = run.info
    shape = [-1, info.in_channels, info.image_size, info.image_size]

    def model(model_name: str) -> None:
        if model_name != name:
            raise Refused(404, f"no model {model_name!r} here: this server serves {name!r}")

    @app.get("/v2", tags=["Open Inference Protocol"])
    def server_metadata() -> dict:
        return {"name": "cnnkit", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}

    @app.get("/v2/health/live", tags=["Open Inference Protocol"])
    def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["Open Inference Protocol"])
    def ready() -> dict:
        return {"ready": True}

    @app.get("/v2/models/{model_name}", tags=["Open Inference Protocol"])
    @app.get("/v2/models/{model_name}/versions/{version}", include_in_schema=False)
    def model_metadata(model_name: str, version: str = "1") -> dict:
        model(model_name)
        return {
            "name": name,
            "versions": ["1"],
            "platform": engine.engine,
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": shape}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(engine.classes)]},
                {"name": "class", "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {"classes": engine.classes},
        }

    @app.get("/v2/models/{model_name}/ready", tags=["Open Inference Protocol"])
    @app.get("/v2/models/{model_name}/versions/{version}/ready", include_in_schema=False)
    def model_ready(model_name: str, version: str = "1") -> dict:
        model(model_name)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{model_name}/infer", tags=["Open Inference Protocol"])
    @app.post("/v2/models/{model_name}/versions/{version}/infer", include_in_schema=False)
    async def infer(model_name: str, request: Request, version: str = "1") -> Response:
        model(model_name)
        async with bodies.body(request, max_bytes) as body:
            header, tensors = _split(body, request.headers.get(HEADER_LENGTH))
            images, wanted = await _inputs(header, tensors, engine), _wanted(header)
            probabilities = await engine.batcher(images)
        content, length = _answer(header.get("id"), name, wanted, probabilities, engine.classes)
        headers = {HEADER_LENGTH: str(length)} if length is not None else {}
        kind = "application/octet-stream" if length is not None else "application/json"
        return Response(content, media_type=kind, headers=headers)


def _split(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The request's JSON header, and the binary tensors after it."""
    if header_length is not None and not (header_length.isdigit() and int(header_length) <= len(body)):
        raise Refused(400, f"{HEADER_LENGTH} must be the byte length of the JSON at the body's start")
    end = int(header_length) if header_length is not None else len(body)
    try:
        header = json.loads(body[:end])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Refused(400, f"the inference request is not JSON ({e})") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or len(header["inputs"]) != 1:
        raise Refused(400, 'an inference request has "inputs": a list of one tensor (UINT8 images or BYTES files)')
    return header, body[end:]


async def _inputs(header: dict, tensors: bytes, engine: "Engine") -> torch.Tensor:
    """The request's one input as the run's uint8 images (N, C, H, W)."""
    tensor = header["inputs"][0]
    if not isinstance(tensor, dict) or not isinstance(tensor.get("shape"), list):
        raise Refused(400, 'the input needs "name", "datatype" and "shape"')
    if not all(type(size) is int for size in tensor["shape"]):  # 8.0 equals 8, and true 1, but neither is a size
        raise Refused(400, 'the input\'s "shape" is a list of whole numbers, e.g. [1, 1, 8, 8]')
    parameters = _parameters(tensor, "the input's")
    raw = tensors if "binary_data_size" in parameters else None
    if raw is not None and len(raw) != parameters["binary_data_size"]:
        raise Refused(400, "the input's binary_data_size is not the bytes that follow the JSON")
    datatype, shape = tensor.get("datatype"), tensor["shape"]
    if datatype == "UINT8":
        return _uint8_images(shape, raw, tensor.get("data"), engine)
    if datatype == "BYTES":
        return await engine.decode(_files(shape, raw, tensor.get("data")))
    raise Refused(400, f"datatype {datatype!r}: this model takes UINT8 images or BYTES image files")


def _uint8_images(shape: list, raw: bytes | None, data: object, engine: "Engine") -> torch.Tensor:
    info = engine.run.info
    expected = [info.in_channels, info.image_size, info.image_size]
    if len(shape) != 4 or shape[1:] != expected or not (isinstance(shape[0], int) and 0 < shape[0] <= MAX_FILES):
        raise Refused(
            400, f"UINT8 images must have the shape [N, {', '.join(map(str, expected))}], N up to {MAX_FILES}"
        )
    count = math.prod(shape)
    values: np.ndarray = np.frombuffer(raw, dtype=np.uint8) if raw is not None else _uint8_json(data)
    if values.size != count:
        raise Refused(400, f"the shape {shape} holds {count:,} values; the data has {values.size:,}")
    return torch.from_numpy(values.astype(np.uint8).reshape(shape))


def _uint8_json(data: object) -> np.ndarray:
    try:
        values = np.asarray(data if isinstance(data, list) else [], dtype=np.int64).ravel()
    except (ValueError, TypeError, OverflowError):
        raise Refused(400, "UINT8 data in JSON is a list of whole numbers, 0-255") from None
    if values.size and (values.min() < 0 or values.max() > 255):
        raise Refused(400, "UINT8 data in JSON is a list of whole numbers, 0-255")
    return values


def _files(shape: list, raw: bytes | None, data: object) -> list[Upload]:
    """BYTES elements: encoded image files, length-prefixed in binary, or base64 strings in JSON."""
    if not (shape and isinstance(shape[0], int) and 0 < shape[0] <= MAX_FILES and math.prod(shape) == shape[0]):
        raise Refused(400, f"BYTES images must have the shape [N] (or [N, 1]), N up to {MAX_FILES}")
    listed = data if isinstance(data, list) else []  # in JSON: base64 strings
    elements = (
        _unpack_bytes(raw) if raw is not None else [from_base64(t, f"image {i}") for i, t in enumerate(listed, 1)]
    )
    if len(elements) != shape[0]:
        raise Refused(400, f"the shape {shape} holds {shape[0]} images; the data has {len(elements)}")
    return [Upload(f"image {i}", element) for i, element in enumerate(elements, 1)]


def _from_json(listed: list) -> list[bytes]:
    return [from_base64(text, f"image {i}") for i, text in enumerate(listed, 1)]


def _unpack_bytes(raw: bytes) -> list[bytes]:
    elements, at = [], 0
    while at + 4 <= len(raw):
        size = int.from_bytes(raw[at : at + 4], "little")
        elements.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    if at != len(raw):
        raise Refused(400, "the BYTES data is not a run of 4-byte lengths, each followed by its bytes")
    return elements


def _wanted(header: dict) -> list[Wanted]:
    """The outputs asked for (all of them when none are named), each in binary when asked so."""
    binary = bool(_parameters(header, "the request's").get("binary_data_output", False))
    asked = header.get("outputs") or [{"name": name} for name in OUTPUTS]
    named = f'"outputs" is a list of {{"name": ...}}, each named {" or ".join(OUTPUTS)}'
    if not isinstance(asked, list):
        raise Refused(400, named)
    wanted = []
    for output in asked:
        if not isinstance(output, dict) or output.get("name") not in OUTPUTS:
            raise Refused(400, named)
        parameters = _parameters(output, "an output's")
        top = parameters.get("classification", 0)
        if not isinstance(top, int) or top < 0:
            raise Refused(400, "classification is a whole number of classes")
        wanted.append(Wanted(output["name"], bool(parameters.get("binary_data", binary)), top))
    return wanted


def _parameters(holder: dict, what: str) -> dict:
    """The "parameters" of a request, an input or an output: none, or a JSON object, as the protocol has them."""
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise Refused(400, f'{what} "parameters" must be a JSON object, e.g. {{"binary_data_size": 64}}')
    return parameters


def _answer(
    request_id: object, name: str, wanted: list[Wanted], probabilities: torch.Tensor, classes: list[str]
) -> tuple[bytes, int | None]:
    """The response's bytes, and its JSON header's length when binary tensors follow it."""
    outputs: list[dict] = []
    blobs: list[bytes] = []
    for output in wanted:
        datatype, values = _values(output, probabilities, classes)
        entry: dict = {"name": output.name, "datatype": datatype, "shape": list(values.shape)}
        if output.binary:
            blob = _pack_bytes(values) if datatype == "BYTES" else values.astype("<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = values.ravel().tolist()
        outputs.append(entry)
    answer: dict = {"model_name": name, "model_version": "1", "outputs": outputs}
    if request_id is not None:
        answer["id"] = request_id
    header = json.dumps(answer).encode()
    return (header + b"".join(blobs), len(header)) if blobs else (header, None)


def _values(output: Wanted, probabilities: torch.Tensor, classes: list[str]) -> tuple[str, np.ndarray]:
    if output.classification:  # Triton's classification extension: "probability:index:name", the top k
        top = probabilities.topk(min(output.classification, len(classes)))
        rows: list = [[f"{p:f}:{i}:{classes[i]}" for p, i in zip(ps, ix, strict=True)]
                for ps, ix in zip(top.values.tolist(), top.indices.tolist(), strict=True)]  # fmt: skip
        return "BYTES", np.array(rows, dtype=object)
    if output.name == "class":
        return "BYTES", np.array([classes[i] for i in probabilities.argmax(1).tolist()], dtype=object)
    return "FP32", probabilities.numpy().astype(np.float32)


def _pack_bytes(values: np.ndarray) -> bytes:
    encoded = [str(value).encode() for value in values.ravel()]
    return b"".join(len(element).to_bytes(4, "little") + element for element in encoded)
