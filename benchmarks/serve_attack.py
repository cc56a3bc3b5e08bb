"""Large images against `cnnkit serve` on loopback: the server's resident memory, and an ordinary request's latency
while they land. Bounded: a fixed number of requests, one round each.

    python benchmarks/serve_attack.py RUN [--concurrent 24]

Starts `cnnkit serve RUN` on a free port, then for each attack image (a 9,400 x 9,400 PNG of a few hundred KB,
past the pixel cap, and a 4,800 x 4,800 one just under it) sends `--concurrent` POSTs of it at once, while one
ordinary client posts one of the run's test images every 0.2 s. Prints the server's resident memory before,
at its peak (sampled every 20 ms from /proc, Linux) and after, the attack's answers, and the ordinary
requests' worst and median latency.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import statistics
import subprocess
import sys
import time

import httpx
from PIL import Image
from serve_load import free_port, test_pngs


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def attack_png(side: int) -> bytes:
    """A PNG of side x side pixels that compresses to little: a few stripes of colour."""
    stripes = Image.new("RGB", (side, 64))
    stripes.putdata([(x % 256, (x * 7) % 256, 128) for _ in range(64) for x in range(side)])
    image = stripes.resize((side, side), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


async def one_round(url: str, pid: int, attack: bytes, ordinary: bytes, concurrent: int) -> dict:
    peak, latencies, done = resident_mb(pid), [], asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_mb(pid))
            await asyncio.sleep(0.02)

    async def ordinary_client(http: httpx.AsyncClient) -> None:
        while not done.is_set():
            started = time.perf_counter()
            answer = await http.post(f"{url}/predict", content=ordinary)
            latencies.append((time.perf_counter() - started, answer.status_code))
            await asyncio.sleep(0.2)

    limits = httpx.Limits(max_connections=concurrent + 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http, httpx.AsyncClient(timeout=120) as calm:
        watching, probing = asyncio.create_task(watch()), asyncio.create_task(ordinary_client(calm))
        started = time.perf_counter()
        answers = await asyncio.gather(*(http.post(f"{url}/predict", content=attack) for _ in range(concurrent)))
        wall = time.perf_counter() - started
        await asyncio.sleep(0.5)  # the ordinary client's requests just after
        done.set()
        await asyncio.gather(watching, probing)
    seconds = [s for s, _ in latencies]
    return {
        "peak_mb": peak,
        "wall": wall,
        "statuses": collections.Counter(a.status_code for a in answers),
        "ordinary": (max(seconds), statistics.median(seconds), len(seconds), {c for _, c in latencies}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--concurrent", type=int, default=24)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "cnnkit", "serve", args.run, "--port", str(port)])
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        ordinary = test_pngs(args.run, 1)[0]
        httpx.post(f"{url}/predict", content=ordinary)  # the first request starts the batcher
        for side in (9400, 4800):
            attack = attack_png(side)
            before = resident_mb(server.pid)
            got = asyncio.run(one_round(url, server.pid, attack, ordinary, args.concurrent))
            worst, median, count, codes = got["ordinary"]
            print(
                f"{args.concurrent} x {side}x{side} PNG ({len(attack) / 1024:.0f} KB): answers {dict(got['statuses'])} "
                f"in {got['wall']:.1f}s; server memory {before:.0f} MB before, peak {got['peak_mb']:.0f} MB, "
                f"{resident_mb(server.pid):.0f} MB after; ordinary requests meanwhile: {count}, worst "
                f"{worst * 1e3:.0f} ms, median {median * 1e3:.0f} ms, statuses {sorted(codes)}"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
