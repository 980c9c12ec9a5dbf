"""Screens many images through TF Serving: checks each locally, sends the good ones in batches, and
accounts for every input (a prediction, or the reason it was refused)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grpc

from contracts.image_check import ImageRejectedError, Limits, check_image
from serving.client import MB, Prediction, ServingClient, ServingError

ENVELOPE_BYTES = MB  # room left in a gRPC message for everything but the image bytes


@dataclasses.dataclass(frozen=True)
class RequestCaps:
    """What one Predict request may carry: images, encoded bytes (the gRPC message limit) and pixels (the
    served model's cap). A batch is cut before any of them would be exceeded."""

    images: int
    bytes: int
    pixels: int

    @classmethod
    def of(cls, serving: Any, images: int) -> RequestCaps:
        """From the config's `serving` section, with `images` per request."""
        message_bytes = serving.max_message_mb * MB - ENVELOPE_BYTES
        return cls(min(images, serving.max_request_images), message_bytes, serving.max_request_pixels)


def batches(sizes: Sequence[tuple[int, int]], caps: RequestCaps) -> list[list[int]]:
    """Indices of (encoded bytes, pixels) items cut into consecutive batches within the caps (an item
    alone over a cap is a batch of its own: the server says why it refuses it)."""
    cut: list[list[int]] = []
    total_bytes = total_pixels = 0
    for index, (size, pixels) in enumerate(sizes):
        if cut and len(cut[-1]) < caps.images and total_bytes + size <= caps.bytes and total_pixels + pixels <= caps.pixels:
            cut[-1].append(index)
            total_bytes, total_pixels = total_bytes + size, total_pixels + pixels
        else:
            cut.append([index])
            total_bytes, total_pixels = size, pixels
    return cut


@dataclasses.dataclass(frozen=True)
class Outcome:
    index: int
    name: str
    prediction: Prediction | None = None
    error: str = ""


def screen_images(
    client: ServingClient,
    items: Sequence[tuple[str, bytes]],
    limits: Limits,
    caps: RequestCaps,
) -> list[Outcome]:
    """Returns one Outcome per (name, encoded bytes) item, in input order.

    Images are decoded and checked with the same function as ingestion (GIF, BMP, TIFF, RGBA, 16-bit are
    converted); the good ones go in batches within `caps`, so a large request is split, never refused whole
    for its size; a batch that TF Serving refuses as INVALID_ARGUMENT is retried image by image so the good
    images are still answered. Other serving errors (server down, unknown model) raise ServingError.
    """
    outcomes: dict[int, Outcome] = {}
    ready: list[tuple[int, bytes]] = []
    pixels: list[int] = []
    for index, (name, data) in enumerate(items):
        try:
            checked = check_image(data, limits)
        except ImageRejectedError as err:
            outcomes[index] = Outcome(index, name, error=str(err))
            continue
        ready.append((index, checked.image_bytes))
        pixels.append(checked.height * checked.width)
    for members in batches([(len(data), n) for (_, data), n in zip(ready, pixels, strict=True)], caps):
        for index, result in _predict_batch(client, [ready[k] for k in members]):
            name = items[index][0]
            outcomes[index] = Outcome(index, name, error=result) if isinstance(result, str) else Outcome(index, name, result)
    return [outcomes[i] for i in range(len(items))]


def _predict_batch(client: ServingClient, batch: list[tuple[int, bytes]]) -> list[tuple[int, Prediction | str]]:
    try:
        return list(zip([i for i, _ in batch], client.predict([data for _, data in batch]), strict=False))
    except ServingError as err:
        if err.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        if len(batch) == 1:
            return [(batch[0][0], f"refused by the model server: {err.details}")]
    return [result for item in batch for result in _predict_batch(client, [item])]
