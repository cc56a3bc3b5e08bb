"""A load test of `cnnkit serve` on loopback: 200 concurrent clients, bounded in requests and in time.

    python benchmarks/serve_load.py RUN [--clients 200 --requests 2000 --seconds 120] [--onnx]

Starts `cnnkit serve RUN` on a free port (after `cnnkit export RUN` with --onnx, so onnxruntime answers),
waits for /health, then `--clients` clients post the run's own test images (PNG) until `--requests` answers
or `--seconds` have passed, and stops the server. Prints requests per second, p50 and p99 latency, failed
requests, and the batches the server formed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import statistics
import subprocess
import sys
import time

import httpx
from PIL import Image

import cnnkit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pngs(run_dir: str, count: int = 64) -> list[bytes]:
    images = cnnkit.load(run_dir, device="cpu").test_split().images[:count]
    files = []
    for image in images:
        buffer = io.BytesIO()
        array = image.permute(1, 2, 0).squeeze(2).numpy()  # (H, W) grey or (H, W, 3) colour
        Image.fromarray(array).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


async def load(url: str, files: list[bytes], clients: int, requests: int, seconds: float) -> tuple[list, int]:
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    sent = iter(range(requests))

    async def client(http: httpx.AsyncClient, number: int) -> None:
        nonlocal failures
        for n in sent:  # the clients share one count of requests
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            try:
                answer = await http.post(f"{url}/predict", content=files[(n + number) % len(files)])
                failures += answer.status_code != 200
            except httpx.HTTPError:
                failures += 1
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(http, i) for i in range(clients)))
    return latencies, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--onnx", action="store_true", help="export to ONNX first, so that onnxruntime answers")
    args = parser.parse_args()
    if args.onnx:
        subprocess.run([sys.executable, "-m", "cnnkit", "export", args.run], check=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "cnnkit", "serve", args.run, "--port", str(port)])
    try:
        for _ in range(300):  # up to a minute for the server to start
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        files = test_pngs(args.run)
        started = time.perf_counter()
        latencies, failures = asyncio.run(load(url, files, args.clients, args.requests, args.seconds))
        wall = time.perf_counter() - started
        health = httpx.get(f"{url}/health").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    quantiles = statistics.quantiles(latencies, n=100)
    print(
        f"{len(latencies)} requests from {args.clients} clients in {wall:.1f}s: "
        f"{len(latencies) / wall:.0f} per second, "
        f"p50 {quantiles[49] * 1e3:.0f} ms, p99 {quantiles[98] * 1e3:.0f} ms, {failures} failed; engine "
        f"{health['engine']}, {health['batches']} batches, the largest {health['largest_batch']}"
    )


if __name__ == "__main__":
    main()
