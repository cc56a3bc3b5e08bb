"""`cnnkit serve`: a real image posted to /predict gets the classes `cnnkit predict` gives; concurrent requests
are predicted together; every bad upload gets its own 4xx with a message, and the server goes on."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

import cnnkit
from cnnkit.data import load_data
from cnnkit.ship.export import export_run, model_name
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


def test_every_common_upload_shape_gets_its_answers_in_order(served):
    run, files = served
    client = testclient.TestClient(create_app(run, top_k=1))
    expected = [answer[0]["class"] for answer in predicted(run, files[:3])]
    raw = client.post("/predict", content=files[0], headers={"content-type": "image/png"}).json()
    curl = client.post("/predict", content=files[0], headers={"content-type": "application/x-www-form-urlencoded"})
    one_file = client.post("/predict", files={"file": ("a.png", files[0], "image/png")}).json()  # curl -F
    many = client.post("/predict", files=[("file", (f"{i}.png", f, "image/png")) for i, f in enumerate(files[:3])])
    one_text = client.post("/predict", json={"image": base64.b64encode(files[0]).decode()}).json()
    texts = client.post("/predict", json={"images": [f"data:image/png;base64,{b64(f)}" for f in files[:3]]}).json()
    assert raw["predictions"][0]["class"] == one_text["predictions"][0]["class"] == expected[0]
    assert curl.json() == raw  # curl --data-binary @cat.jpg names its bytes a url-encoded form
    assert [r["file"] for r in one_file["results"]] == ["a.png"]
    assert [r["file"] for r in many.json()["results"]] == ["0.png", "1.png", "2.png"]
    assert [r["predictions"][0]["class"] for r in many.json()["results"]] == expected
    assert [r["predictions"][0]["class"] for r in texts["results"]] == expected
    assert client.get("/health").json()["largest_batch"] == 3  # a request's files: one batch


def predicted(run, files: list[bytes]) -> list[dict]:
    return run.predict_images([Image.open(io.BytesIO(f)) for f in files], top_k=1)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "request_args, status, message",
    [
        ({"data": {"a": "b"}}, 415, "the body is not an image this server can read"),  # curl -d: no file
        ({"json": {"picture": "x"}}, 400, 'JSON needs "image"'),
        ({"json": {"image": "not base64!"}}, 400, "image 1 is not valid base64"),
        ({"files": {"file": ("a.txt", b"hello", "text/plain")}}, 415, "a.txt is not an image this server can read"),
        ({"files": {"note": (None, "text only")}}, 400, "the request holds no image"),
    ],
)
def test_an_unsupported_upload_shape_gets_a_4xx_that_names_the_shapes_that_work(served, request_args, status, message):
    run, _ = served
    refused = testclient.TestClient(create_app(run)).post("/predict", **request_args)
    assert refused.status_code == status and message in refused.json()["detail"]


def test_docs_declare_the_upload_bodies_and_need_no_network(served):
    run, _ = served
    client = testclient.TestClient(create_app(run))
    bodies = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*", "application/json"} <= set(bodies)
    page = client.get("/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(a.startswith("/") for a in assets)  # served here: no CDN
    assert all(client.get(a).status_code == 200 for a in assets)


def test_too_many_pixels_are_refused_from_the_header_and_a_large_jpeg_decodes_smaller(served):
    run, _ = served
    client = testclient.TestClient(create_app(run, max_pixels=1_000_000))
    big_png, big_jpeg = encoded((1200, 1000), "PNG"), encoded((2400, 2000), "JPEG")
    refused = client.post("/predict", content=big_png)
    assert (
        refused.status_code == 413 and "1200x1000 pixels is over the 1,000,000-pixel limit" in refused.json()["detail"]
    )
    assert client.post("/predict", content=big_jpeg).status_code == 200  # decoded at 1/4: 600x500


def encoded(size: tuple[int, int], kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, format=kind)
    return buffer.getvalue()


def test_the_page_names_the_run_and_its_classes_as_text(served):
    run, _ = served
    page = testclient.TestClient(create_app(run)).get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    facts = json.loads(re.search(r"const FACTS = (.*);", page.text)[1])
    assert facts == {"run": run.dir.name, "classes": run.classes}
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


@pytest.fixture(scope="module")
def live(served, tmp_path_factory):
    """`cnnkit serve` in its own process on a free loopback port, each request given 1 s to arrive; yields its
    URL, then stops it and hands back what it logged."""
    run, _ = served
    port, logged = free_port(), tmp_path_factory.mktemp("live") / "log.txt"
    command = [sys.executable, "-m", "cnnkit", "serve", str(run.dir), "--port", str(port), "--timeout", "1"]
    with logged.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(url, server)
            yield SimpleNamespace(url=url, port=port, log=logged)
        finally:
            server.terminate()
            server.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen) -> None:
    for _ in range(300):
        if server.poll() is not None:
            raise RuntimeError(f"cnnkit serve ended with {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("cnnkit serve did not answer /health in 30 s")


def test_tritons_own_client_gets_the_answers_predict_gives(served, live):
    http = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]: pip install 'tritonclient[http]'")
    run, files = served
    client, name = http.InferenceServerClient(f"127.0.0.1:{live.port}"), model_name(run.dir)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    metadata = client.get_model_metadata(name)
    assert metadata["inputs"][0] == {"name": "images", "datatype": "UINT8", "shape": [-1, 1, 8, 8]}
    images = np.stack([np.asarray(Image.open(io.BytesIO(f)))[None] for f in files[:5]])  # (5, 1, 8, 8) uint8
    tensor = http.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)  # sent as binary data, the client's default
    result = client.infer(name, [tensor])
    files_in = http.InferInput("images", [5], "BYTES")
    files_in.set_data_from_numpy(np.array(files[:5], dtype=object))  # the encoded PNG files themselves
    top = client.infer(name, [files_in], outputs=[http.InferRequestedOutput("probabilities", class_count=2)])
    expected = run.predict_images([Image.open(io.BytesIO(f)) for f in files[:5]], top_k=2)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (5, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert [c.decode() for c in result.as_numpy("class")] == [e[0]["class"] for e in expected]
    for row, want in zip(top.as_numpy("probabilities"), expected, strict=True):  # "probability:index:name"
        got = [entry.decode().split(":") for entry in row]
        assert [g[2] for g in got] == [w["class"] for w in want]
        assert np.allclose([float(g[0]) for g in got], [w["probability"] for w in want], atol=1e-4)


def test_a_slow_client_is_closed_and_one_that_goes_away_logs_one_line(served, live):
    _, files = served
    with socket.create_connection(("127.0.0.1", live.port)) as slow:
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + files[0][:10])
        slow.settimeout(10)
        assert slow.recv(100) == b""  # closed by the server within its --timeout of 1 s, not left open
    with socket.create_connection(("127.0.0.1", live.port)) as gone:
        gone.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + files[0][:10])
    assert httpx.post(f"{live.url}/predict", content=files[1]).status_code == 200  # and it serves on
    time.sleep(2)
    logged = live.log.read_text()
    assert "took over 1s to send its request: closed" in logged and "Traceback" not in logged


def test_serve_refuses_a_busy_port_and_a_limit_past_reason_in_one_line(served, tmp_path):
    run, _ = served
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        busy = subprocess.run([sys.executable, "-m", "cnnkit", "serve", str(run.dir), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert busy.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert "serving" not in busy.stdout and "Traceback" not in busy.stderr
    endless = subprocess.run([sys.executable, "-m", "cnnkit", "serve", str(run.dir), "--max-mb", "inf"],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert endless.returncode != 0 and "--max-mb must be above 0 and at most 1024" in endless.stderr
    assert "Traceback" not in endless.stderr


def test_a_stale_export_is_passed_over_for_the_runs_own_weights(served, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the export extra")
    run, files = served
    copy = tmp_path / "run"
    shutil.copytree(run.dir, copy)
    export_run(cnnkit.load(copy, device="cpu"), "onnx")
    assert testclient.TestClient(create_app(cnnkit.load(copy))).get("/health").json()["engine"] == "onnxruntime"
    weights = load_file(copy / "weights.safetensors")  # the run trained on since: other weights
    save_file(
        {name: w + 0.01 if w.is_floating_point() else w for name, w in weights.items()}, copy / "weights.safetensors"
    )
    client = testclient.TestClient(create_app(cnnkit.load(copy)))
    assert client.get("/health").json()["engine"] == "torch"
    assert client.post("/predict", content=files[0]).status_code == 200


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM, reason="no Chromium here (apt-get install chromium)")
def test_a_person_drops_an_image_on_the_page_and_reads_the_answer(served, live, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install playwright")
    run, files = served
    (tmp_path / "digit.png").write_bytes(files[2])
    expected = run.predict([tmp_path / "digit.png"], top_k=3)[0]["predictions"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or shutil.which("chromium-browser")
        )
        page = browser.new_page()
        page.goto(live.url)
        assert page.text_content("#run") == run.dir.name and "10 classes: 0, 1, 2" in page.text_content("#classes")
        page.set_input_files("#file", str(tmp_path / "digit.png"))
        page.wait_for_selector("#answer .row")
        rows = page.query_selector_all("#answer .row")
        shown = [(row.get_attribute("data-class"), row.query_selector(".probability").text_content()) for row in rows]
        browser.close()
    assert shown == [(p["class"], f"{p['probability'] * 100:.1f}%") for p in expected]
