"""`cnnkit serve`: a real image posted to /predict gets the classes `cnnkit predict` gives; concurrent requests
are predicted together; every bad upload gets its own 4xx with a message, and the server goes on."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

import cnnkit
from cnnkit.data import load_data
from cnnkit.ship.export import export_run
from cnnkit.ship.serve import create_app

httpx = pytest.importorskip("httpx", reason="needs the serve extra and httpx: pip install 'cnnkit[serve]' httpx")
testclient = pytest.importorskip("fastapi.testclient", reason="needs the serve extra: pip install 'cnnkit[serve]'")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A digits run, and PNG files of 24 of its test images."""
    run = cnnkit.train(model="simplecnn", epochs=3, report=False, out=str(tmp_path_factory.mktemp("serve") / "run"))
    images = load_data("digits").splits["test"].images[:24]
    return cnnkit.load(run.dir, device="cpu"), [png(image[0].numpy()) for image in images]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_posted_image_gets_the_classes_predict_gives(served, tmp_path):
    run, files = served
    client = testclient.TestClient(create_app(run, top_k=2))
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["classes"] == run.classes and health["engine"] == "torch"
    answer = client.post("/predict", content=files[0], headers={"content-type": "image/png"})
    assert answer.status_code == 200
    (tmp_path / "digit.png").write_bytes(files[0])
    assert answer.json()["predictions"] == run.predict([tmp_path / "digit.png"], top_k=2)[0]["predictions"]


def test_concurrent_requests_are_predicted_together_by_onnx_when_exported(served):
    run, files = served
    pytest.importorskip("onnxruntime", reason="needs the export extra")
    export_run(run, "onnx")
    app = create_app(run)

    async def post_all() -> list:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cnnkit") as client:
            answers = await asyncio.gather(*(client.post("/predict", content=f) for f in files))
            return [*answers, await client.get("/health")]

    *answers, health = asyncio.run(post_all())
    assert [a.status_code for a in answers] == [200] * len(files)
    alone = run.predict_images([Image.open(io.BytesIO(f)) for f in files], top_k=3)
    for answer, expected in zip(answers, alone, strict=True):  # ONNX and torch: the same within 1e-4
        got = answer.json()["predictions"]
        assert [p["class"] for p in got] == [p["class"] for p in expected]
        assert np.allclose([p["probability"] for p in got], [p["probability"] for p in expected], atol=1e-4)
    assert health.json()["engine"] == "onnxruntime" and health.json()["largest_batch"] > 1  # batched together


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"", 400, "the body is empty"),
        (b"GIF89a, but not really an image", 415, "not an image this server can read"),
        (b"\x89PNG\r\n\x1a\n" + bytes(2000), 413, "over the 1,024-byte limit"),
    ],
)
def test_bad_uploads_get_a_clear_4xx_and_the_server_goes_on(served, body, status, message):
    run, files = served
    client = testclient.TestClient(create_app(run, max_bytes=1024))
    refused = client.post("/predict", content=body)
    assert refused.status_code == status and message in refused.json()["detail"]
    assert client.post("/predict", content=files[1]).status_code == 200


def test_an_upload_past_the_decompression_bomb_limit_is_refused(served, monkeypatch):
    run, files = served
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32)  # the 8x8 digits are 64 pixels: past it
    refused = testclient.TestClient(create_app(run)).post("/predict", content=files[0])
    assert refused.status_code == 415 and "decompression bombs" in refused.json()["detail"]
