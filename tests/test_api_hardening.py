"""Hardening: bounded bodies off the loop, client-closed requests, key
before body, /ready without paths, declared error statuses, reload `changed`."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from api_world import SEED_PAYLOAD, Server, running_server
from waiting import wait_until
from worlds import SCORE_DAY, World

from uba import io
from uba.api.body import INLINE_BODY_BYTES, JsonBody, holds_too_many_values

KEY = "hardening-key-1"
J = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def world(serving_world: World) -> World:
    return serving_world


@pytest.fixture(scope="module")
def open_server(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(world.env(), tmp_path_factory.mktemp("open") / "api.log") as server:
        yield server


@pytest.fixture(scope="module")
def keyed_server(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(world.env(UBA_API_KEYS=KEY), tmp_path_factory.mktemp("keyed") / "api.log") as server:
        yield server


def _metric_lines(server: Server, prefix: str) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics").text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


# ---------------------------------------------------------------- item 9: /feedback bounds


def test_feedback_with_100k_empty_items_is_a_413_without_validating_them(keyed_server: Server) -> None:
    body = json.dumps({"items": [{}] * 100_000})
    with keyed_server.client(headers={"X-API-Key": KEY}) as client:
        response = client.post("/feedback", content=body, headers=J)
    assert response.status_code == 413, response.text[:300]
    (error,) = response.json()["detail"]
    assert error["field"] == "body" and "api.max_batch" in error["message"]


def test_feedback_one_item_over_max_batch_is_a_413_naming_items(world: World, tmp_path: Path) -> None:
    env = world.env(UBA_API__MAX_BATCH="3")
    with running_server(env, tmp_path / "api.log") as server, server.client() as client:
        item = {"event_id": "e1", "label": "benign"}
        response = client.post("/feedback", json={"items": [item] * 4})
        assert response.status_code == 413, response.text
        (error,) = response.json()["detail"]
        assert error["field"] == "items" and "limit is 3" in error["message"]
        assert client.post("/feedback", json={"items": [item] * 3}).status_code == 201


def test_large_bodies_are_parsed_off_the_event_loop() -> None:
    """The model's validation runs in a pool thread for a large body, in place for a small one."""
    import asyncio

    from pydantic import BaseModel, field_validator

    seen: list[str] = []

    class Probe(BaseModel):
        text: str

        @field_validator("text")
        @classmethod
        def _where(cls, value: str) -> str:
            seen.append(threading.current_thread().name)
            return value

    class FakeRequest:
        def __init__(self, raw: bytes) -> None:
            self.raw = raw

        async def body(self) -> bytes:
            return self.raw

    parser = JsonBody(Probe, 1000, "test")

    async def parse_both() -> str:
        await parser(FakeRequest(b'{"text": "small"}'))  # type: ignore[arg-type]
        await parser(FakeRequest(json.dumps({"text": "x" * (INLINE_BODY_BYTES + 1)}).encode()))  # type: ignore[arg-type]
        return threading.current_thread().name

    loop_thread = asyncio.run(parse_both())
    assert seen[0] == loop_thread and seen[1] != loop_thread


@pytest.mark.parametrize(("raw", "limit", "expected"), [
    (json.dumps({"items": [{}] * 1000}), 500, True),
    (json.dumps({"items": [{}] * 100}), 500, False),
    (json.dumps({"note": ",:[{" * 5000}), 500, False),  # punctuation inside a string does not count
    (json.dumps({"items": [""] * 2000}), 500, True),  # too many strings for the limit
    (json.dumps({"a": 'x\\",:' * 3000}), 500, False),  # escaped quotes stay inside the string
])
def test_value_count_before_parsing(raw: str, limit: int, expected: bool) -> None:
    assert holds_too_many_values(raw.encode(), limit) is expected


# ---------------------------------------------------------------- item 10: client closed


def _close_mid_body(url: str, path: str, declared: int, sent: bytes) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {declared}\r\n\r\n").encode()
        sock.sendall(head + sent)  # then close: TCP delivers the bytes before the FIN


def test_clients_that_close_mid_body_count_as_499_not_500(world: World, tmp_path: Path) -> None:
    with running_server(world.env(), tmp_path / "api.log") as server:
        for _ in range(10):
            _close_mid_body(server.url, "/predict", 1000, b'{"user_id": ')
        def counted_499s() -> dict[str, float] | None:
            counts = _metric_lines(server, "uba_api_requests_total")
            return counts if sum(v for k, v in counts.items() if 'status="499"' in k) >= 10 else None

        counts = wait_until(counted_499s, 10, "ten 499s in uba_api_requests_total")
    assert sum(v for k, v in counts.items() if 'status="499"' in k) == 10, counts
    assert counts['uba_api_requests_total{method="POST",route="/predict",status="499"}'] == 10, counts
    assert not any('status="500"' in k for k in counts), counts
    log = (tmp_path / "api.log").read_text()
    assert "Traceback" not in log and '"POST /predict" 499' in log and '"POST /predict" 500' not in log


# ---------------------------------------------------------------- item 13: key first, /ready, OpenAPI


@pytest.mark.parametrize(("content", "headers"), [
    ("{not json", J),
    ('{"user_id": ' + "[" * 5000 + "]" * 5000 + "}", J),
    (json.dumps(SEED_PAYLOAD), {"content-type": "text/plain"}),
    (json.dumps({"events": [SEED_PAYLOAD] * 5000}), J),
])
def test_the_api_key_is_checked_before_the_body(keyed_server: Server, content: str, headers: dict[str, str]) -> None:
    for path in ("/predict", "/predict/batch", "/feedback"):
        response = httpx.post(keyed_server.url + path, content=content, headers=headers)
        assert response.status_code == 401, (path, response.text[:200])
        assert response.json()["detail"][0]["field"] == "X-API-Key"


TWO_MB = 2 * 1024 * 1024 + 1024  # just over api.max_body_bytes (2 MiB by default)


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


@pytest.mark.parametrize("chunked", [True, False])
def test_a_2mb_body_without_the_key_is_a_401_not_a_413(keyed_server: Server, chunked: bool) -> None:
    """The attack: a 2 MB body sent without the key got 413 (the body was sized before the
    key was looked at). Neither a chunked body nor a declared Content-Length is read or
    sized before the key; with the key, the same body is a 413."""
    for path in ("/predict", "/predict/batch", "/feedback", "/admin/reload"):
        body = _chunks(TWO_MB) if chunked else b"x" * TWO_MB
        response = httpx.post(keyed_server.url + path, content=body, headers=J, timeout=30)
        assert response.status_code == 401, (path, response.text[:200])
        assert response.json()["detail"][0]["field"] == "X-API-Key"
        body = _chunks(TWO_MB) if chunked else b"x" * TWO_MB
        keyed = httpx.post(keyed_server.url + path, content=body, headers={**J, "X-API-Key": KEY}, timeout=30)
        assert keyed.status_code == 413, (path, keyed.text[:200])
        assert keyed.json()["detail"][0]["field"] == "body"


def test_413s_are_counted_under_the_route_template(world: World, tmp_path: Path) -> None:
    """The 413 (and 499, above) outcomes were labelled route="unmatched"."""
    with running_server(world.env(), tmp_path / "api.log") as server:
        for path in ("/predict", "/feedback"):
            assert httpx.post(server.url + path, content=_chunks(TWO_MB), headers=J).status_code == 413
        assert httpx.post(server.url + "/predict", content=b"x" * TWO_MB, headers=J).status_code == 413
        counts = _metric_lines(server, "uba_api_requests_total")
    assert counts['uba_api_requests_total{method="POST",route="/predict",status="413"}'] == 2, counts
    assert counts['uba_api_requests_total{method="POST",route="/feedback",status="413"}'] == 1, counts
    assert not any('route="unmatched"' in k for k in counts), counts


def test_ready_shows_no_absolute_path_to_an_unauthenticated_caller(world: World, tmp_path: Path) -> None:
    missing = tmp_path / "secret-location" / "models"
    env = world.env(UBA_API_KEYS=KEY, UBA_MODEL_DIR=str(missing))
    with running_server(env, tmp_path / "api.log") as server:
        anonymous = httpx.get(server.url + "/ready")
        wrong = httpx.get(server.url + "/ready", headers={"X-API-Key": "nope"})
        keyed = httpx.get(server.url + "/ready", headers={"X-API-Key": KEY})
    for response in (anonymous, wrong):
        assert response.status_code == 503
        reason = response.json()["reason"]
        assert "no model directory" in reason and str(tmp_path) not in reason and "secret-location" not in reason
        assert not re.search(r"(^|\s)/\w", reason), reason
    assert keyed.status_code == 503 and str(missing) in keyed.json()["reason"]


def test_ready_redacts_paths_on_an_open_server_too(world: World, tmp_path: Path) -> None:
    env = world.env(UBA_DATA_DIR=str(tmp_path / "nowhere" / "data"))
    with running_server(env, tmp_path / "api.log") as server:
        reason = httpx.get(server.url + "/ready").json()["reason"]
    assert "no baseline snapshot" in reason and str(tmp_path) not in reason


def test_openapi_declares_every_error_status_the_routes_send(keyed_server: Server, open_server: Server) -> None:
    keyed = httpx.get(keyed_server.url + "/openapi.json").json()["paths"]
    for path in ("/predict", "/predict/batch", "/feedback"):
        responses = keyed[path]["post"]["responses"]
        assert {"400", "401", "413", "415", "422"} <= set(responses), (path, sorted(responses))
        assert keyed[path]["post"]["requestBody"]["required"] is True
    assert {"401", "409", "413"} <= set(keyed["/admin/reload"]["post"]["responses"])
    assert "401" in keyed["/model"]["get"]["responses"] and keyed["/model"]["get"]["security"]
    opened = httpx.get(open_server.url + "/openapi.json").json()
    assert "security" not in opened["paths"]["/predict"]["post"]  # no key configured: none declared
    schemas = opened["components"]["schemas"]
    assert {"EventIn", "BatchIn", "FeedbackRequest", "FeedbackItem"} <= set(schemas)
    assert schemas["FeedbackRequest"]["properties"]["items"]["maxItems"] == 1000


def test_docs_list_every_route(open_server: Server) -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    paths = httpx.get(open_server.url + "/openapi.json").json()["paths"]
    listed = [(method.upper(), path) for path, operations in paths.items() for method in operations]
    assert ("POST", "/feedback") in listed
    for method, path in listed:
        assert f"| `{method} {path}` |" in docs, (method, path)


# ---------------------------------------------------------------- item 13: reload `changed`


def _one_user_less(frame: pl.DataFrame) -> pl.DataFrame:
    """The same snapshot without its last user (the population row stays)."""
    return frame.filter(pl.col("user_id") != frame["user_id"].sort()[-1])


def test_reload_reports_changed_when_the_snapshot_of_the_same_day_is_rewritten(world: World, tmp_path: Path) -> None:
    own = world.copy(tmp_path / "world")
    snapshot = io.latest_baseline_snapshot(own.data_dir)
    assert snapshot is not None
    with running_server(own.env(), tmp_path / "api.log") as server, server.client() as client:
        assert client.post("/admin/reload").json()["changed"] is False  # nothing new
        before = client.get("/model").json()["baseline_users"]
        frame = io.read_baseline_snapshot(snapshot[1])
        io.write_baseline_snapshot(_one_user_less(frame), own.data_dir, SCORE_DAY)  # as `score --date` does
        reloaded = client.post("/admin/reload").json()
        assert reloaded["changed"] is True and reloaded["baseline_as_of"] == SCORE_DAY.isoformat()
        assert client.get("/model").json()["baseline_users"] == before - 1
        assert client.post("/admin/reload").json()["changed"] is False


def test_periodic_reloader_picks_up_a_rewritten_snapshot(world: World, tmp_path: Path) -> None:
    own = world.copy(tmp_path / "world")
    snapshot = io.latest_baseline_snapshot(own.data_dir)
    assert snapshot is not None
    env = own.env(UBA_API__RELOAD_INTERVAL_SEC="0.3")
    with running_server(env, tmp_path / "api.log") as server, server.client() as client:
        before = client.get("/model").json()["baseline_users"]
        frame = io.read_baseline_snapshot(snapshot[1])
        io.write_baseline_snapshot(_one_user_less(frame), own.data_dir, SCORE_DAY)
        wait_until(lambda: client.get("/model").json()["baseline_users"] != before, 20,
                   "the reloader to pick up the snapshot with one user less")
        assert client.get("/model").json()["baseline_as_of"] == SCORE_DAY.isoformat()


def test_a_newer_day_still_counts_as_changed(world: World, tmp_path: Path) -> None:
    own = world.copy(tmp_path / "world")
    snapshot = io.latest_baseline_snapshot(own.data_dir)
    assert snapshot is not None
    with running_server(own.env(), tmp_path / "api.log") as server, server.client() as client:
        io.write_baseline_snapshot(io.read_baseline_snapshot(snapshot[1]), own.data_dir,
                                   SCORE_DAY + timedelta(days=1))
        body = client.post("/admin/reload").json()
        assert body["changed"] is True and body["previous_baseline_as_of"] == SCORE_DAY.isoformat()


def test_integral_floats_count_as_integers_and_bounds_are_declared(open_server: Server) -> None:
    """3.0 is the integer 3 (as ingest reads it and JSON Schema's integer means); 2.5 is not."""
    whole = {**SEED_PAYLOAD, "events_in_session": 190.0, "hour_of_day": 2.0, "day_of_week": 1.0}
    assert httpx.post(open_server.url + "/predict", json=whole).status_code == 200
    half = httpx.post(open_server.url + "/predict", json={**SEED_PAYLOAD, "events_in_session": 2.5})
    assert half.status_code == 422 and half.json()["detail"][0]["field"] == "events_in_session"
    event = httpx.get(open_server.url + "/openapi.json").json()["components"]["schemas"]["EventIn"]
    hour = event["properties"]["hour_of_day"]["anyOf"][0]
    assert (hour["minimum"], hour["maximum"]) == (0, 23)
    assert event["properties"]["events_in_session"]["minimum"] == 1
