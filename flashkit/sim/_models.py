"""``GET /v1/models``: the models the simulated upstream answers for, in the shape the caller's
API expects. OpenAI's list by default; Anthropic's when the request carries the
``anthropic-version`` header (as the official Anthropic SDK always sends it).

Any model name is accepted by the chat and Messages routes; this list names the flashcard stages'
models and a generic one.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Final

from flashkit.sim._content import STAGE1_MODEL, STAGE2_MODEL

__all__ = ["MODEL_IDS", "MODELS_PATHS", "models_body"]

MODELS_PATHS: Final = frozenset({"/v1/models", "/models"})
MODEL_IDS: Final = (STAGE1_MODEL, STAGE2_MODEL, "flashkit-sim")


def models_body(*, anthropic: bool, created: int) -> bytes:
    """The list as JSON bytes; ``created``: Unix seconds for every model."""
    if anthropic:
        stamp = _dt.datetime.fromtimestamp(created, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data = [
            {"type": "model", "id": name, "display_name": name, "created_at": stamp}
            for name in MODEL_IDS
        ]
        page = {"data": data, "has_more": False, "first_id": MODEL_IDS[0], "last_id": MODEL_IDS[-1]}
        return json.dumps(page).encode()
    listing = [
        {"id": name, "object": "model", "created": created, "owned_by": "flashkit-sim"}
        for name in MODEL_IDS
    ]
    return json.dumps({"object": "list", "data": listing}).encode()
