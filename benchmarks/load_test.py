"""Load figures for serving: drives the gRPC model server and the HTTP endpoint at several concurrencies,
single image and batched, and reports throughput and p50/p95/p99 latency (0 errors required).

    .venv/bin/python -m benchmarks.load_test

starts `bloodcell serve` (the pushed model under <serving_root>/<model_name>) and `bloodcell web` as separate
processes, or measures running ones with --grpc/--http. Prints a markdown table; writes JSON with --output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional

import httpx
import numpy as np
import typer

from cli.options import CONFIG_OPTION, load_config_or_exit
from serving.client import ServingClient, ServingError

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(process.args)} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def _run(call: Callable[[int], int], requests: int, concurrency: int) -> dict:
    """Runs `requests` calls on `concurrency` threads; each call returns the images it classified."""
    latencies, errors = [], []

    def one(i: int) -> int:
        start = time.perf_counter()
        try:
            images = call(i)
        except (ServingError, httpx.HTTPError, AssertionError) as err:
            errors.append(str(err))
            return 0
        latencies.append(time.perf_counter() - start)
        return images

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        images = sum(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": requests,
        "concurrency": concurrency,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "images_per_s": images / wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


@app.command()
def main(
    grpc_target: Optional[str] = typer.Option(None, "--grpc", help="A running gRPC server (else one is started)."),
    http_url: Optional[str] = typer.Option(None, "--http", help="A running web endpoint (else one is started)."),
    concurrency: List[int] = typer.Option([1, 4, 16, 64], help="Concurrent clients (repeat the option)."),
    requests: int = typer.Option(400, help="Requests per single-image run."),
    batch_size: int = typer.Option(32, help="Images per batched request."),
    batched_requests: int = typer.Option(64, help="Requests per batched run."),
    output: Optional[Path] = typer.Option(None, help="Write the results as JSON here."),
    model_base_path: Optional[Path] = typer.Option(None, help="Serve this folder of versions [default: the pushed model]."),
    config_path: Path = CONFIG_OPTION,
) -> None:
    config = load_config_or_exit(config_path)
    processes: list[subprocess.Popen] = []
    try:
        grpc_target, http_url = start_serving(config_path, processes, grpc_target, http_url, model_base_path)
        results = _benchmark(config, grpc_target, http_url, concurrency, requests, batch_size, batched_requests)
    finally:
        stop(processes)
    typer.echo(_markdown(results))
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=1))
    if any(r["errors"] for r in results):
        typer.echo("errors: " + "; ".join(r["first_error"] for r in results if r["errors"]), err=True)
        raise typer.Exit(1)


def start_serving(
    config_path: Path, processes: list[subprocess.Popen], grpc_target: str | None = None, http_url: str | None = None,
    model_base_path: Path | None = None,
) -> tuple[str, str]:
    """Starts `bloodcell serve` and `bloodcell web` (each unless a running one is given), appends them to
    `processes`, waits until the web endpoint reports the model ready, and returns (gRPC target, web URL)."""
    bloodcell = [str(Path(sys.executable).with_name("bloodcell"))]
    if grpc_target is None:
        port = free_port()
        grpc_target = f"127.0.0.1:{port}"
        serve = ["serve", "--port", str(port), "--host", "127.0.0.1", "--config", str(config_path)]
        serve += ["--model-base-path", str(model_base_path)] if model_base_path else []
        processes.append(subprocess.Popen(bloodcell + serve))
    if http_url is None:
        port = free_port()
        http_url = f"http://127.0.0.1:{port}"
        web_command = ["web", "--grpc", grpc_target, "--port", str(port), "--config", str(config_path)]
        web = subprocess.Popen(bloodcell + web_command, stdout=subprocess.DEVNULL)
        processes.append(web)
        wait_ready(f"{http_url}/readyz", web)
    return grpc_target, http_url


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
        process.wait()


def _benchmark(config, grpc_target, http_url, concurrencies, requests, batch_size, batched_requests) -> list[dict]:
    data = Path(config.paths.data_roots[0].path)
    files = [f for c in config.classes for f in sorted((data / c).glob("*.jpg"))[:20]]
    images = [f.read_bytes() for f in files]
    client = ServingClient(grpc_target, config.model_name, timeout_s=120)

    def grpc_call(size: int) -> Callable[[int], int]:
        def call(i: int) -> int:
            batch = [images[(i * size + k) % len(images)] for k in range(size)]
            assert len(client.predict(batch)) == size
            return size

        return call

    def http_call(http: httpx.Client, size: int) -> Callable[[int], int]:
        def call(i: int) -> int:
            batch = [("files", (f"{k}.jpg", images[(i * size + k) % len(images)], "image/jpeg")) for k in range(size)]
            response = http.post(f"{http_url}/predict", files=batch)
            response.raise_for_status()
            assert all(r["ok"] for r in response.json()["results"])
            return size

        return call

    grpc_call(batch_size)(0)  # warm-up: traces the signature for both shapes
    grpc_call(1)(0)
    results = []
    for c in concurrencies:
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=c)) as http:
            http_call(http, 1)(0)
            runs = [("gRPC", 1, requests), ("gRPC", batch_size, batched_requests)]
            runs += [("HTTP", 1, requests), ("HTTP", batch_size, batched_requests)]
            for path, size, count in runs:
                call = grpc_call(size) if path == "gRPC" else http_call(http, size)
                result = _run(call, count, c)
                result.update(path=path, batch=size)
                results.append(result)
                print(_markdown([result], header=False), file=sys.stderr, flush=True)
    client.close()
    return results


def _markdown(results: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            f"Load test, {os.cpu_count()} CPU cores, server, endpoint and load generator on one machine:",
            "",
            "| path | batch | concurrency | requests | images/s | p50 ms | p95 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for r in results:
        lines.append(
            f"| {r['path']} | {r['batch']} | {r['concurrency']} | {r['requests']} | {r['images_per_s']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    app()
