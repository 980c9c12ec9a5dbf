"""The web endpoint: a FastAPI app in front of TF Serving (gRPC), with a small page for people."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, List

import grpc
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response

from contracts.config import Config
from contracts.image_check import ImageRejectedError, Limits, check_image
from contracts.signatures import SiteNameError
from serving.client import ServingClient, ServingError
from serving.explain import overlay_png
from serving.screening import RequestCaps, screen_images

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("static") / "index.html"


MULTIPART_OVERHEAD = 64 * 1024  # bytes a multipart body may hold beyond its files (boundaries, headers)


@dataclasses.dataclass(frozen=True)
class UploadLimits:
    max_files: int
    image: Limits  # the served model's pixel cap, the web's own file size limit
    caps: RequestCaps  # what one Predict request to TF Serving may carry

    @property
    def max_body_bytes(self) -> int:
        return self.max_files * (self.image.max_file_bytes + MULTIPART_OVERHEAD)


def upload_limits(config: Config) -> UploadLimits:
    """The served model's pixel cap, the web's own file size and count limits, the Predict request caps."""
    serving = config.serving
    image = Limits(serving.max_image_pixels, config.ingestion.min_side, serving.web_max_file_bytes)
    return UploadLimits(serving.web_max_files, image, RequestCaps.of(serving, serving.web_max_files))


class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` is refused with 413 while it streams in (by its
    Content-Length at once, else when the running count passes the limit), before it is spooled whole."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._detail(int(declared))}, status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._detail(received))  # FastAPI re-raises HTTPException from body parsing
            return message

        await self.app(scope, counted, send)

    def _detail(self, size: int) -> str:
        return f"request body of {size} bytes or more; at most {self.max_bytes} (web_max_files x web_max_file_bytes)"


def _serving_error(err: ServingError) -> HTTPException:
    """Maps a TF Serving failure to an HTTP status without leaking internals."""
    if err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return HTTPException(503, f"model server unavailable: {err.details}")
    if err.code == grpc.StatusCode.NOT_FOUND:
        return HTTPException(503, f"model not loaded in the model server: {err.details}")
    if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in err.details:
        return HTTPException(413, f"request too large for the model server (serving.max_message_mb): {err.details}")
    if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return HTTPException(503, f"model server busy: {err.details}", headers={"Retry-After": "1"})
    return HTTPException(502, f"model server error ({err.code.name})")


def create_app(client: ServingClient, critical_class: str, limits: UploadLimits) -> FastAPI:
    """The app; `client` points at TF Serving and is shared by all requests (gRPC channels are thread-safe)."""
    app = FastAPI(
        title="Blood-cell screening",
        description="Classifies blood-cell images into five classes and flags myeloblasts (leukemic blasts). "
        "A screening aid for review by a haematologist, not a diagnosis.",
        version="1",
    )

    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/healthz", summary="The process is up")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded in TF Serving")
    def readyz() -> JSONResponse:
        try:
            available = [s.version for s in client.status() if s.state == "AVAILABLE"]
        except ServingError as err:
            return JSONResponse({"ready": False, "detail": _serving_error(err).detail}, status_code=503)
        if not available:
            return JSONResponse({"ready": False, "detail": "no model version AVAILABLE"}, status_code=503)
        return JSONResponse({"ready": True, "model": client.model_name, "version": max(available)})

    def site_client(site: str) -> ServingClient:
        try:
            return client.for_site(site.strip() or None)
        except SiteNameError as err:
            raise HTTPException(422, str(err)) from None

    @app.post("/predict", summary="Classify one or more uploaded images (multipart field 'files'; 'site': its model)")
    def predict(files: List[UploadFile] = File(default=[]), site: str = Form("")) -> JSONResponse:
        if not files:
            raise HTTPException(400, "no image in the request: send one or more files in the multipart field 'files'")
        if len(files) > limits.max_files:
            raise HTTPException(413, f"{len(files)} files in one request; at most {limits.max_files}")
        items = [(f.filename or f"file {i}", f.file.read(limits.image.max_file_bytes + 1)) for i, f in enumerate(files)]
        try:
            outcomes = screen_images(site_client(site), items, limits.image, limits.caps)
        except ServingError as err:
            raise _serving_error(err) from None
        results = []
        for outcome in outcomes:
            result = {"index": outcome.index, "filename": outcome.name, "ok": outcome.prediction is not None}
            if outcome.prediction is not None:
                result.update(
                    predicted_class=outcome.prediction.predicted_class,
                    probabilities=outcome.prediction.probabilities,
                    myeloblast_alert=outcome.prediction.alert(critical_class),
                    needs_review=outcome.prediction.needs_review,
                    out_of_scope=outcome.prediction.out_of_scope,
                    out_of_scope_probability=outcome.prediction.out_of_scope_probability,
                    model=outcome.prediction.model_name,
                    model_version=outcome.prediction.model_version,
                )
            else:
                result["error"] = outcome.error
            results.append(result)
        status = 200 if any(r["ok"] for r in results) else 422
        answered = sorted({f"{r['model']} version {r['model_version']}" for r in results if r["ok"]})
        payload = {"model": client.model_name, "site": site.strip(), "answered_by": answered}
        return JSONResponse(payload | {"critical_class": critical_class, "results": results}, status)

    @app.post(
        "/explain",
        summary="Grad-CAM heat-map overlay (PNG) of one uploaded image (multipart field 'file')",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def explain(file: UploadFile = File(...), site: str = Form("")) -> Response:
        data = file.file.read(limits.image.max_file_bytes + 1)
        try:
            checked = check_image(data, limits.image)  # as /predict: BMP, TIFF, RGBA converted the same way
        except ImageRejectedError as err:
            raise HTTPException(422, f"{file.filename}: {err}") from None
        try:
            explanation = site_client(site).explain(checked.image_bytes)
        except ServingError as err:
            raise _serving_error(err) from None
        overlay = overlay_png(checked.pixels, explanation)
        headers = {
            "X-Predicted-Class": explanation.predicted_class,
            "X-Out-Of-Scope": str(explanation.out_of_scope).lower(),
            "X-Model": explanation.model_name,
        }
        return Response(overlay, media_type="image/png", headers=headers)

    return app
