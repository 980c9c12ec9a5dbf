"""Screens many images through TF Serving: checks each locally, sends the good ones in batches, and
accounts for every input (a prediction, or the reason it was refused)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grpc

from components.image_verification import ImageRejectedError, Limits, check_image
from serving.client import Prediction, ServingClient, ServingError


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
    batch_size: int,
) -> list[Outcome]:
    """Returns one Outcome per (name, encoded bytes) item, in input order.

    Images are decoded and checked with the same function as ingestion (GIF, BMP, TIFF, RGBA, 16-bit are
    converted); a batch that TF Serving refuses as INVALID_ARGUMENT is retried image by image so the good
    images are still answered. Other serving errors (server down, unknown model) raise ServingError.
    """
    outcomes: dict[int, Outcome] = {}
    ready: list[tuple[int, bytes]] = []
    for index, (name, data) in enumerate(items):
        try:
            ready.append((index, check_image(data, limits).image_bytes))
        except ImageRejectedError as err:
            outcomes[index] = Outcome(index, name, error=str(err))
    for start in range(0, len(ready), batch_size):
        batch = ready[start : start + batch_size]
        for index, result in _predict_batch(client, batch):
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
