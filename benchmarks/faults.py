"""Fault and hostile-input benchmark: every ingestion fault of the catalogue (tests/helpers/faults.py) against the
real ingestion, every hostile request against a running `bloodcell serve` and `bloodcell web`, then a mixed
load: good requests at concurrency 64 through the web endpoint while hostile ones (oversized batches, 40 Mpx
images, truncated files, slow clients) run beside them. Prints one table and the mixed-load figures.

    .venv/bin/python -m benchmarks.faults [--good-requests 1000] [--output faults.json]

Serves the pushed model under <serving_root>/<model_name> (or --model-base-path). Run from the repository root.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import grpc
import httpx
import numpy as np
import typer
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from benchmarks.load_test import start_serving, stop
from cli.options import CONFIG_OPTION, load_config_or_exit
from contracts.signatures import SERVING_INPUT, SERVING_SIGNATURE
from serving.client import MB, string_tensor
from tests.helpers.faults import (
    build_faulty_root,
    endless_upload,
    good_files,
    ingest_in_subprocess,
    restore_permissions,
    solid_png,
)

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@dataclasses.dataclass
class Row:
    fault: str
    expected: str
    observed: str
    lost: int = 0

    @property
    def ok(self) -> bool:
        return self.observed.startswith(self.expected) and not self.lost


def ingestion_rows() -> list[Row]:
    """Each fault of the catalogue, ingested beside real images in a fresh process (without root's file access)."""
    with tempfile.TemporaryDirectory() as top:
        root, faults = build_faulty_root(Path(top))
        try:
            done = ingest_in_subprocess(root, Path(top) / "out")
        finally:
            restore_permissions(root)
        if done.returncode:
            return [Row("ingestion of the faulty folder", "completes", f"failed: {done.stderr.strip().splitlines()[-1]}")]
        report = json.loads((Path(top) / "out" / "report.json").read_text())
        good = good_files(root, faults)
    reasons = {r["file"]: r["reason"] for r in report["rejections"]}
    duplicates = {d["file"] for d in report["duplicate_files"]}
    rows = []
    for fault in faults:
        observed = (
            f"rejected: {reasons[fault.file]}" if fault.file in reasons
            else "duplicate" if fault.file in duplicates else "ingested"
        )  # fmt: skip
        expected = f"rejected: {fault.reason}" if fault.outcome == "rejected" else fault.outcome
        rows.append(Row(f"ingestion: {fault.kind}", expected, observed[:110]))
    ingested_good = report["ingested"] - sum(f.outcome == "ingested" for f in faults)
    accounted = report["ingested"] + report["duplicates"] + report["rejected"]
    rows.append(
        Row(
            f"ingestion: {len(good)} good images beside the faults",
            f"{len(good)} ingested, {len(good) + len(faults)} of {len(good) + len(faults)} files accounted for",
            f"{ingested_good} ingested, {accounted} of {report['found']} files accounted for",
            lost=len(good) - ingested_good + report["found"] - accounted,
        )
    )
    return rows


def _grpc(target: str, images: list[bytes], timeout: float = 60, tensor=None, signature: str = SERVING_SIGNATURE) -> str:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "bloodcell", signature
    request.inputs[SERVING_INPUT].CopyFrom(tensor if tensor is not None else string_tensor(images))
    options = [("grpc.max_send_message_length", 256 * MB)]
    try:
        with grpc.insecure_channel(target, options=options) as channel:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
        return "OK"
    except grpc.RpcError as err:
        return f"{err.code().name}: {err.details()}"


def _http(url: str, path: str, **kwargs) -> str:
    response = httpx.post(f"{url}{path}", timeout=60, **kwargs)
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if "results" in body:
        detail = "; ".join(r.get("error", "ok") for r in body["results"])
    else:
        detail = body.get("detail", response.headers.get("content-type", ""))
    return f"{response.status_code}: {detail}"


def _declare_upload(url: str, total: int, timeout: float) -> socket.socket:
    """A connection that has sent the headers of a multipart POST /predict declaring `total` body bytes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.sendall(
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {total}\r\n\r\n".encode()
    )
    return sock


def slow_client(url: str, seconds: float, total: int = 2_000_000) -> str:
    """Declares a large multipart upload and trickles it in 1 kB pieces for `seconds`, then hangs up."""
    with _declare_upload(url, total, seconds + 10) as sock:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock.sendall(b"-" * 1024)
            time.sleep(0.2)
    return "hung up"


def oversized_declaration(url: str, total: int) -> str:
    """Declares a body over the limit, sends 1 kB of it and reads the answer (which must not wait for the rest)."""
    with _declare_upload(url, total, 30) as sock:
        sock.sendall(b"-" * 1024)
        status = sock.recv(4096).split(b"\r\n", 1)[0].decode()
    return status.removeprefix("HTTP/1.1 ")


def hostile_cases(good: bytes, limits) -> list[tuple[str, str, Callable[[str, str], str]]]:
    """(fault, expected, call(grpc_target, web_url) -> observed) for every hostile request."""
    bomb, truncated = solid_png(8000, 5000), good[: len(good) // 3]
    side = int((limits.max_image_pixels - 1) ** 0.5)
    big_bmp = io.BytesIO()
    Image.open(io.BytesIO(good)).resize((1800, 1800)).save(big_bmp, format="BMP")
    over_body = limits.web_max_files * (limits.web_max_file_bytes + 64 * 1024) + 1
    from tensorflow import make_tensor_proto

    multipart = {"Content-Type": "multipart/form-data; boundary=b"}

    def to_grpc(batch: list[bytes], **kwargs) -> Callable[[str, str], str]:
        return lambda grpc_target, web_url: _grpc(grpc_target, batch, **kwargs)

    def to_web(path: str, **kwargs) -> Callable[[str, str], str]:
        return lambda grpc_target, web_url: _http(web_url, path, **kwargs)

    float_tensor = make_tensor_proto(np.zeros((1, 8, 8, 3), np.float32))
    too_many_pixels = [solid_png(side, side)] * (limits.max_request_pixels // side**2 + 1)
    too_many_files = [("files", ("x.jpg", good))] * (limits.web_max_files + 1)
    return [
        ("gRPC: batch of max_request_images + 1", "INVALID_ARGUMENT", to_grpc([good] * (limits.max_request_images + 1))),
        ("gRPC: 40 Mpx solid-colour PNG", "INVALID_ARGUMENT", to_grpc([good, bomb])),
        ("gRPC: images over max_request_pixels together", "INVALID_ARGUMENT", to_grpc(too_many_pixels)),
        ("gRPC: truncated JPEG", "INVALID_ARGUMENT", to_grpc([truncated])),
        ("gRPC: text bytes", "INVALID_ARGUMENT", to_grpc([b"not an image"])),
        ("gRPC: float tensor for image_bytes", "INVALID_ARGUMENT", to_grpc([], tensor=float_tensor)),
        ("gRPC: unknown signature", "INVALID_ARGUMENT", to_grpc([good], signature="no_such")),
        ("gRPC: deadline already passed", "DEADLINE_EXCEEDED", to_grpc([good] * 32, timeout=0.001)),
        ("gRPC: message over the 64 MB limit", "RESOURCE_EXHAUSTED", to_grpc([os.urandom(MB)] * 70)),
        ("web: body over the limit (Content-Length)", "413",
         lambda grpc_target, web_url: oversized_declaration(web_url, over_body)),
        ("web: chunked body over the limit", "413",
         lambda grpc_target, web_url: _http(web_url, "/predict", content=endless_upload(2 * over_body), headers=multipart)),
        ("web: web_max_files + 1 files", "413", to_web("/predict", files=too_many_files)),
        ("web: 40 Mpx PNG upload", "422: decompression bomb", to_web("/predict", files=[("files", ("b.png", bomb))])),
        ("web: truncated JPEG upload", "422: truncated or corrupt JPEG",
         to_web("/predict", files=[("files", ("t.jpg", truncated))])),
        ("web: no file", "400", to_web("/predict", files=[])),
        ("web: /explain of a 1800x1800 BMP", "200", to_web("/explain", files={"file": ("c.bmp", big_bmp.getvalue())})),
        ("web: /explain of a 40 Mpx PNG", "422", to_web("/explain", files={"file": ("b.png", bomb)})),
        ("web: slow client (1 kB per 0.2 s for 5 s)", "hung up", lambda grpc_target, web_url: slow_client(web_url, 5)),
    ]  # fmt: skip


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mixed_load(grpc_target: str, web_url: str, images: list[bytes], requests: int, concurrency: int, cases) -> dict:
    """Good single-image web requests at `concurrency`, with every hostile case looping on 4 threads beside them."""
    latencies, failures, stop_hostile = [], [], threading.Event()
    hostile_sent = [0]

    def hostile_loop(offset: int) -> None:
        k = offset
        while not stop_hostile.is_set():
            _, _, call = cases[k % len(cases)]
            try:
                call(grpc_target, web_url)
            except (httpx.HTTPError, OSError):
                pass  # a hostile client may be cut off; only the good requests are judged
            hostile_sent[0] += 1
            k += 1

    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as http:

        def good(i: int) -> None:
            start = time.perf_counter()
            try:
                response = http.post(f"{web_url}/predict", files=[("files", (f"{i}.jpg", images[i % len(images)], "image/jpeg"))])
                if response.status_code != 200 or not response.json()["results"][0]["ok"]:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                    return
            except httpx.HTTPError as err:
                failures.append(repr(err))
                return
            latencies.append(time.perf_counter() - start)

        hostile = [threading.Thread(target=hostile_loop, args=(k * 5,), daemon=True) for k in range(4)]
        for thread in hostile:
            thread.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(good, range(requests)))
        wall = time.perf_counter() - started
        stop_hostile.set()
        for thread in hostile:
            thread.join(timeout=120)
    ms = np.array(latencies or [np.nan]) * 1000
    return {
        "good_requests": requests, "good_failed": len(failures), "first_failure": failures[0] if failures else "",
        "hostile_requests": hostile_sent[0], "concurrency": concurrency, "wall_s": round(wall, 1),
        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
    }  # fmt: skip


@app.command()
def main(
    model_base_path: Optional[Path] = typer.Option(None, help="Folder of numbered versions [default: the pushed model]."),
    good_requests: int = typer.Option(1000, help="Good requests in the mixed load."),
    concurrency: int = typer.Option(64, help="Concurrent good clients in the mixed load."),
    output: Optional[Path] = typer.Option(None, help="Write the results as JSON here."),
    config_path: Path = CONFIG_OPTION,
) -> None:
    config = load_config_or_exit(config_path)
    rows = ingestion_rows()
    data = Path(config.paths.data_roots[0].path)
    images = [f.read_bytes() for c in config.classes for f in sorted((data / c).glob("*.jpg"))[:20]]
    processes = []
    try:
        grpc_target, web_url = start_serving(config_path, processes, model_base_path=model_base_path)
        cases = hostile_cases(images[0], config.serving)
        for fault, expected, call in cases:
            try:
                observed = call(grpc_target, web_url)
            except (httpx.HTTPError, OSError) as err:
                observed = f"client error: {err!r}"
            rows.append(Row(fault, expected, " ".join(observed.split())[:110]))
        load = mixed_load(grpc_target, web_url, images, good_requests, concurrency, cases)
        load.update(serve_peak_rss_mb=peak_rss_mb(processes[0].pid), web_peak_rss_mb=peak_rss_mb(processes[1].pid))
        crashed = [p.args[1] for p in processes if p.poll() is not None]
    finally:
        stop(processes)
    lines = [
        f"Faults and hostile input, {os.cpu_count()} CPU cores, servers and clients on one machine:", "",
        "| fault | expected | observed | images lost | ok |", "|---|---|---|---:|:-:|",
        *(f"| {r.fault} | {r.expected} | {r.observed.replace('|', '/')} | {r.lost} | {'yes' if r.ok else 'NO'} |" for r in rows),
        "", f"Mixed load: {load['good_requests']} good web requests at concurrency {load['concurrency']} with "
        f"{load['hostile_requests']} hostile requests beside them: {load['good_failed']} good requests failed, "
        f"p50 {load['p50_ms']:.0f} ms, p99 {load['p99_ms']:.0f} ms, {load['wall_s']} s; peak RSS: model server "
        f"{load['serve_peak_rss_mb']:.0f} MB, web endpoint {load['web_peak_rss_mb']:.0f} MB; crashed: {crashed or 'none'}",
    ]  # fmt: skip
    typer.echo("\n".join(lines))
    if output:
        results = {"rows": [dataclasses.asdict(r) | {"ok": r.ok} for r in rows], "mixed_load": load}
        output.write_text(json.dumps(results, indent=1))
    if not all(r.ok for r in rows) or load["good_failed"] or crashed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
