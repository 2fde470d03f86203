"""``uba-api`` with one serving choice switched to its alternative, for side-by-side runs.

``python benchmarks/api_variant_server.py VARIANT [uba-api flags]`` patches the product in
this process, then runs ``uba-api``'s own ``main`` (one worker only: the patch lives in this
process), so everything else (settings, logging, uvicorn options) is the product's:

- ``coalesce-always``: the batcher yields to coalesce on every request, even a lone one
  (its behaviour before it had a lone mode);
- ``inline``: every event scored on its own, at once, never coalesced;
- ``stdlib-json``: answers serialised with the standard library's ``json`` (as Starlette's
  ``JSONResponse`` does) instead of orjson.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from starlette.responses import Response

import uba.api.batcher as batcher
import uba.api.routes.predict as predict
from uba.api.inference import ScoringEvent, ScoringResult
from uba.api.model_state import ModelState

VARIANTS = ("coalesce-always", "inline", "stdlib-json")


async def _inline(self: batcher.ScoringBatcher, state: ModelState, event: ScoringEvent) -> tuple[ScoringResult, int]:
    return self._score_alone(state, event), 0


def _stdlib_json(content: Mapping[str, object]) -> Response:
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Response(body, media_type="application/json")


def apply(variant: str) -> None:
    if variant == "coalesce-always":
        batcher.ScoringBatcher._overlapping = lambda self, loop: True  # type: ignore[method-assign]
    elif variant == "inline":
        batcher.ScoringBatcher.score = _inline  # type: ignore[method-assign]
    elif variant == "stdlib-json":
        predict.json_response = _stdlib_json
    else:
        raise SystemExit(f"unknown variant {variant!r}; one of {VARIANTS}")


if __name__ == "__main__":
    if os.environ.get("UBA_API__WORKERS", "1") != "1":
        raise SystemExit("variants run with one worker (the patch lives in this process)")
    apply(sys.argv[1])
    from uba.api.serve import main

    sys.argv = ["uba-api", *sys.argv[2:]]
    main()
