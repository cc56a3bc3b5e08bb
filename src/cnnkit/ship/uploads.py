"""The shapes an image reaches `POST /predict` in, each read within bounds: the file's own bytes as the body,
a multipart form with one or more files (curl -F, a browser form, `requests.post(files=...)`), or JSON with
base64 images. Each refusal is an `Refused` with its HTTP status and a message that says what works."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

SHAPES = (
    "POST the image file's bytes (curl --data-binary @cat.jpg URL/predict), a multipart form with one or more "
    'files (curl -F file=@cat.jpg URL/predict), or JSON {"image": BASE64} or {"images": [BASE64, ...]}'
)
MAX_FILES = 64  # images in one request, at most: one batch


class Refused(Exception):
    """A request the server will not take: its HTTP status and the reason, said to the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Upload:
    name: str  # the file's name where the client gave one, else its place: "image 1"
    data: bytes


class BodyBudget:
    """The bytes of every request body held at once, bounded: past `most`, a request waits for none of them and
    gets a 503 (a thousand uploads of 10 MB each would otherwise hold 10 GB)."""

    def __init__(self, most: int):
        self.most, self.held = most, 0

    @asynccontextmanager
    async def body(self, request, max_bytes: int) -> AsyncIterator[bytes]:
        """The request's whole body, counted against the budget until the request is answered."""
        taken = [0]

        def take(count: int) -> None:
            if self.held + count > self.most:
                raise Refused(503, "the server is holding as many uploads as it can; try again in a moment")
            self.held, taken[0] = self.held + count, taken[0] + count

        try:
            yield await _read(request, max_bytes, take)
        finally:
            self.held -= taken[0]


async def _read(request, max_bytes: int, take) -> bytes:
    """The body, refused (413) as soon as it is past `max_bytes`, and (400) when empty."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise Refused(400, "Content-Length must be a whole number of bytes")
    too_large = Refused(413, f"the upload is over the {max_bytes:,}-byte limit of this server (--max-mb)")
    if declared is not None and int(declared) > max_bytes:
        raise too_large
    take(int(declared or 0))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
        if declared is None:  # sent without a length (chunked): counted as it comes
            take(len(chunk))
    if not body:
        raise Refused(400, f"the body is empty: {SHAPES}")
    return bytes(body)


async def uploads_in(request, body: bytes) -> tuple[list[Upload], bool]:
    """The image files a request holds, in order, by the shape its Content-Type names, and whether they came as
    a list (JSON "images", or a form's files): then they get a list of answers, even for one."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        found, listed = await _form_files(request, body), True
    elif kind == "application/json":
        found, listed = _json_images(body)
    else:  # the file's own bytes, whatever the type says: curl --data-binary calls them a url-encoded form
        found, listed = [Upload("the body", body)], False
    if not found:
        raise Refused(400, f"the request holds no image; {SHAPES}")
    if len(found) > MAX_FILES:
        raise Refused(413, f"{len(found)} images in one request; this server takes at most {MAX_FILES}")
    return found, listed


async def _form_files(request, body: bytes) -> list[Upload]:
    from starlette.requests import Request

    async def replay() -> dict:  # the body already read, within its limits, handed to Starlette's form parser
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=MAX_FILES + 1, max_fields=MAX_FILES + 1)
    except Exception as e:  # Starlette's parse errors have no common base: each says what is wrong
        raise Refused(400, f"the multipart form cannot be read ({e}); {SHAPES}") from None
    files = [value for _, value in form.multi_items() if not isinstance(value, str)]
    uploads = [Upload(f.filename or f"image {i}", await f.read()) for i, f in enumerate(files, 1)]
    await form.close()
    return uploads


def _json_images(body: bytes) -> tuple[list[Upload], bool]:
    try:
        sent = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Refused(400, f"the body is not JSON ({e}); {SHAPES}") from None
    if isinstance(sent, dict) and isinstance(sent.get("image"), str):
        images, listed = [sent["image"]], False
    elif isinstance(sent, dict) and isinstance(sent.get("images"), list):
        images, listed = sent["images"], True
    else:
        raise Refused(400, f'JSON needs "image" (a base64 string) or "images" (a list of them); {SHAPES}')
    return [Upload(f"image {i}", from_base64(text, f"image {i}")) for i, text in enumerate(images, 1)], listed


def from_base64(text: object, what: str) -> bytes:
    """An image file sent as base64 text (or as a data URL holding it)."""
    if not isinstance(text, str):
        raise Refused(400, f"{what} is not a base64 string")
    data = text
    if text.startswith("data:"):  # a data URL: data:image/png;base64,...
        _, comma, data = text.partition(",")
        if not comma:
            raise Refused(400, f"{what} is a data URL with no data: data:image/png;base64,BASE64")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, f"{what} is not valid base64") from None
