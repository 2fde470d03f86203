"""Without a model, the scoring routes say why as /ready does: no file-system paths to a
caller without a valid key (on an open API, nobody has one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from api_world import SEED_PAYLOAD, running_server
from worlds import World

_ABSOLUTE_PATH = re.compile(r"(?<![\w.~<-])/[A-Za-z0-9_.-]+/")


@pytest.fixture
def broken_world(shared_world: World, tmp_path: Path) -> World:
    world = shared_world.copy(tmp_path / "world")
    latest = world.model_dir / "LATEST"
    latest.unlink()
    latest.symlink_to(tmp_path / "elsewhere" / "secret-layout" / "LATEST")
    return world


@pytest.mark.parametrize("keys", ["", "k-1"])
def test_the_503_of_the_model_routes_shows_paths_only_to_a_valid_key(broken_world: World, tmp_path: Path,
                                                                     keys: str) -> None:
    """/ready hid the model directory from callers without a valid key, while /predict,
    /predict/batch and /model answered the same reason with every absolute path in it
    (``no model loaded: /srv/.../models/LATEST: ...``) to anyone an open API lets in."""
    env = broken_world.env(UBA_API_KEYS=keys) if keys else broken_world.env()
    with running_server(env, tmp_path / "api.log", uba_api=["--no-access-log"]) as server, \
            server.client() as c:
        given = {"X-API-Key": keys} if keys else {}
        answers = [c.post("/predict", json=SEED_PAYLOAD, headers=given),
                   c.post("/predict/batch", json={"events": [SEED_PAYLOAD]}, headers=given),
                   c.get("/model", headers=given)]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            detail = answer.json()["detail"]
            assert detail.startswith("no model loaded: "), detail
            if keys:  # a valid key: the whole reason, as /ready gives it
                assert str(broken_world.model_dir) in detail, detail
            else:
                assert "<model-dir>" in detail and not _ABSOLUTE_PATH.search(detail), detail
                assert "secret-layout" not in detail and str(tmp_path) not in detail, detail
