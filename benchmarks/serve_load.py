"""A load test of `cnnkit serve` on loopback: 200 concurrent clients, bounded in requests and in time.

    python benchmarks/serve_load.py RUN [--clients 200 --requests 2000 --seconds 120] [--onnx] [--warm-up]
        [--shape raw|multipart|oip] [--server-cpus 0 --client-cpus 1] [--wrk --seconds 10]

Starts `cnnkit serve RUN` on a free port (after `cnnkit export RUN` with --onnx, so onnxruntime answers),
waits for /health, then `--clients` clients post the run's own test images (PNG) until `--requests` answers
or `--seconds` have passed, and stops the server. With --warm-up, every client first sends one request
that is not counted (its connection is open and the server has answered before the clock starts). --shape:
each request the PNG's bytes as the body (raw, the default), a multipart form holding it (curl -F), or an
Open Inference Protocol request with it as a BYTES tensor (tritonclient's binary layout). The
--server-cpus and --client-cpus (Linux) pin each side to its own cores. With --wrk, wrk (a client in C)
sends the load for --seconds instead: httpx's clients cost the machine more than the server does. Prints
requests per second, p50 and p99 latency, failed requests, and the batches the server formed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

import cnnkit
from cnnkit.ship.export import model_name


def cpus(text: str) -> set[int]:
    return {int(n) for n in text.split(",")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pngs(run_dir: str, count: int = 64) -> list[bytes]:
    images = cnnkit.load(run_dir, device="cpu").split().images[:count]
    files = []
    for image in images:
        buffer = io.BytesIO()
        array = image.permute(1, 2, 0).squeeze(2).numpy()  # (H, W) grey or (H, W, 3) colour
        Image.fromarray(array).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def post(http: httpx.AsyncClient, url: str, png: bytes, shape: str):
    """One request of `shape` carrying the PNG file; `url` is the server's /predict, or its model's /infer."""
    if shape == "multipart":
        return http.post(url, files={"file": ("image.png", png, "image/png")})
    if shape == "oip":
        tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4 + len(png)}}
        header = json.dumps({"inputs": [tensor]})
        body = header.encode() + len(png).to_bytes(4, "little") + png
        return http.post(url, content=body, headers={"Inference-Header-Content-Length": str(len(header))})
    return http.post(url, content=png)


async def load(
    url: str, files: list[bytes], clients: int, requests: int, seconds: float, warm_up: bool, shape: str = "raw"
) -> tuple[list, int, float]:
    """Latencies of the answered requests, failures, and the seconds they took."""
    latencies: list[float] = []
    failures = 0
    deadline = 0.0
    sent = iter(range(requests))

    async def client(http: httpx.AsyncClient, number: int) -> None:
        nonlocal failures
        for n in sent:  # the clients share one count of requests
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            try:
                answer = await post(http, url, files[(n + number) % len(files)], shape)
                failures += answer.status_code != 200
            except httpx.HTTPError:
                failures += 1
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        if warm_up:  # one answered request per client first: connections open, nothing counted
            await asyncio.gather(*(post(http, url, files[i % len(files)], shape) for i in range(clients)))
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(*(client(http, i) for i in range(clients)))
    return latencies, failures, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--onnx", action="store_true", help="export to ONNX first, so that onnxruntime answers")
    parser.add_argument("--warm-up", action="store_true", help="one uncounted request per client first")
    parser.add_argument("--shape", choices=("raw", "multipart", "oip"), default="raw", help="how each request sends")
    parser.add_argument("--wrk", action="store_true", help="load from wrk for --seconds instead of httpx clients")
    parser.add_argument("--server-cpus", type=cpus, help="pin the server to these CPUs, e.g. 0 or 0,1")
    parser.add_argument("--client-cpus", type=cpus, help="pin the clients to these CPUs")
    args = parser.parse_args()
    if args.onnx:
        subprocess.run([sys.executable, "-m", "cnnkit", "export", args.run], check=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "cnnkit", "serve", args.run, "--port", str(port)],
        preexec_fn=(lambda: os.sched_setaffinity(0, args.server_cpus)) if args.server_cpus else None,
        env={**os.environ, "OMP_NUM_THREADS": str(len(args.server_cpus))} if args.server_cpus else None,
    )
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    try:
        for _ in range(300):  # up to a minute for the server to start
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        files = test_pngs(args.run)
        route = f"v2/models/{model_name(Path(args.run))}/infer" if args.shape == "oip" else "predict"
        target = f"{url}/{route}"
        if args.wrk:
            result = wrk_load(url, files[0], args.clients, args.seconds)
        else:
            latencies, failures, wall = asyncio.run(
                load(target, files, args.clients, args.requests, args.seconds, args.warm_up, args.shape)
            )
            quantiles = statistics.quantiles(latencies, n=100)
            result = (
                f"{len(latencies)} requests from {args.clients} clients in {wall:.1f}s: "
                f"{len(latencies) / wall:.0f} per second, "
                f"p50 {quantiles[49] * 1e3:.0f} ms, p99 {quantiles[98] * 1e3:.0f} ms, {failures} failed"
            )
        health = httpx.get(f"{url}/health").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{result}; engine {health['engine']}, {health['batches']} batches, the largest {health['largest_batch']}")


def wrk_load(url: str, png: bytes, clients: int, seconds: float) -> str:
    """The same load from wrk (C, one thread): a client that costs the machine far less than httpx's."""
    if shutil.which("wrk") is None:
        sys.exit("--wrk needs wrk on the PATH (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as scratch:
        image, script = Path(scratch) / "image.png", Path(scratch) / "post.lua"
        image.write_bytes(png)
        script.write_text(
            f'wrk.method = "POST"\nlocal f = io.open("{image}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
        )
        command = [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{round(seconds)}s",
            "--latency",
            "-s",
            str(script),
            f"{url}/predict",
        ]
        report = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    figure = {line.split()[0]: line.split()[1] for line in report.splitlines() if line.strip()[:3] in ("50%", "99%")}
    failed = sum(int(line.split(":")[1].split()[0]) for line in report.splitlines() if "Non-2xx" in line)
    errors = [line.strip() for line in report.splitlines() if "Socket errors" in line]
    total = next(line.split()[0] for line in report.splitlines() if "requests in" in line)
    rate = next(line.split()[1] for line in report.splitlines() if line.startswith("Requests/sec"))
    return (
        f"wrk: {total} requests from {clients} connections in {round(seconds)}s: {rate} per second, "
        f"p50 {figure['50%']}, p99 {figure['99%']}, {failed} failed" + "".join(f", {e}" for e in errors)
    )


if __name__ == "__main__":
    main()
