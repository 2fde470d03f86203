"""The inference API on a real uvicorn server (127.0.0.1) with a real bundle and snapshot."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from api_world import EXTRA_FIELDS, SEED_FIELDS, SEED_PAYLOAD, Server, as_payload, running_server
from worlds import SCORE_DAY, START, World

from uba import io

MAX_BATCH = 50
MAX_BODY = 65536


@pytest.fixture(scope="module")
def world(serving_world: World) -> World:
    return serving_world


@pytest.fixture(scope="module")
def server(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = world.env(UBA_API__MAX_BATCH=str(MAX_BATCH), UBA_API__MAX_BODY_BYTES=str(MAX_BODY))
    with running_server(env, tmp_path_factory.mktemp("server") / "uvicorn.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def day_events(world: World) -> pl.DataFrame:
    return io.scan_events(world.data_dir, SCORE_DAY).collect()


def test_seed_payload_gets_the_seed_fields_and_the_extras(client: httpx.Client, world: World) -> None:
    response = client.post("/predict", json=SEED_PAYLOAD)
    assert response.status_code == 200, response.text
    body = response.json()
    for field in (*SEED_FIELDS, *EXTRA_FIELDS):
        assert field in body, field
    assert 0 < body["anomaly_score"] <= 1
    assert body["threshold_percentile"] == pytest.approx(0.98)
    assert body["is_anomaly"] == (body["anomaly_score"] >= body["threshold"])
    assert body["model_version"] == world.version
    assert body["baseline_as_of"] == SCORE_DAY.isoformat()
    assert body["known_user"] is False  # user 123 is not in the generated population
    assert body["user_id"] == "123"
    # 5 hours and 190 actions at 2 a.m. is the seed's anomaly; it must be flagged with reasons
    assert body["is_anomaly"] is True
    assert body["reasons"] and len(body["reasons"]) == len(body["reason_kinds"])


def test_timestamp_gives_the_same_answer_as_hour_and_day(client: httpx.Client) -> None:
    by_fields = client.post("/predict", json=SEED_PAYLOAD).json()
    stamped = {k: v for k, v in SEED_PAYLOAD.items() if k not in ("hour_of_day", "day_of_week")}
    stamped["timestamp"] = "2026-03-10T02:30:00"  # a Tuesday (day 1), 02:xx UTC, naive = UTC
    by_stamp = client.post("/predict", json=stamped).json()
    with_offset = {**stamped, "timestamp": "2026-03-10T04:30:00+02:00"}
    by_offset = client.post("/predict", json=with_offset).json()
    assert by_stamp["anomaly_score"] == by_fields["anomaly_score"] == by_offset["anomaly_score"]


def test_known_user_uses_own_baseline(client: httpx.Client, day_events: pl.DataFrame) -> None:
    row = day_events.row(0, named=True)
    known = client.post("/predict", json=as_payload(row)).json()
    unknown = client.post("/predict", json={**as_payload(row), "user_id": "nobody-" + row["user_id"]}).json()
    assert known["known_user"] is True and unknown["known_user"] is False
    assert known["anomaly_score"] != unknown["anomaly_score"]


def test_batch_answers_in_order_like_single_requests(client: httpx.Client, day_events: pl.DataFrame) -> None:
    payloads = [as_payload(r) for r in day_events.head(20).iter_rows(named=True)]
    payloads.append({**SEED_PAYLOAD, "event_id": "seed"})
    response = client.post("/predict/batch", json={"events": payloads})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(payloads)
    assert [p["event_id"] for p in body["predictions"]] == [p["event_id"] for p in payloads]
    singles = [client.post("/predict", json=p).json() for p in payloads[:5]]
    for single, batched in zip(singles, body["predictions"], strict=False):
        assert math.isclose(single["anomaly_score"], batched["anomaly_score"], rel_tol=0, abs_tol=1e-12)
        assert single["reasons"] == batched["reasons"]
    assert body["anomalies"] == sum(p["is_anomaly"] for p in body["predictions"])


def test_answers_hold_exactly_the_declared_fields(client: httpx.Client, day_events: pl.DataFrame) -> None:
    """The scoring routes build their JSON from plain values (no response-model pass): the
    answer must still be the declared model, field for field, with nothing extra."""
    from uba.api.schemas import BatchPrediction, Prediction

    single = client.post("/predict", json=SEED_PAYLOAD)
    assert single.headers["content-type"] == "application/json"
    assert list(single.json()) == list(Prediction.model_fields)
    assert Prediction.model_validate_json(single.content).model_dump(mode="json") == single.json()
    batch = client.post("/predict/batch", json={"events": [as_payload(r) for r in day_events.head(3).iter_rows(named=True)]})
    assert list(batch.json()) == list(BatchPrediction.model_fields)
    assert BatchPrediction.model_validate_json(batch.content).model_dump(mode="json") == batch.json()
    schema = client.get("/openapi.json").json()["paths"]
    for path, model in (("/predict", "Prediction"), ("/predict/batch", "BatchPrediction")):
        answer = schema[path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": f"#/components/schemas/{model}"}, answer


def test_model_ready_and_health(client: httpx.Client, world: World) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["model_version"] == world.version
    info = client.get("/model").json()
    assert info["model_version"] == world.version
    assert info["training"]["training_window"]["start"] == START.isoformat()
    assert info["threshold_percentile"] == pytest.approx(info["percentile"] / 100)
    assert "session_length_excess" in info["features"]
    assert info["baseline_as_of"] == SCORE_DAY.isoformat() and info["baseline_users"] > 0


def test_metrics_count_requests_anomalies_and_model(client: httpx.Client, world: World) -> None:
    client.post("/predict", json=SEED_PAYLOAD)
    client.post("/predict", json={"user_id": 1})
    text = client.get("/metrics").text
    assert 'uba_api_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'uba_api_requests_total{method="POST",route="/predict",status="422"}' in text
    assert 'uba_api_request_duration_seconds_bucket{le="0.005",method="POST",route="/predict"}' in text
    anomalies = [line for line in text.splitlines() if line.startswith("uba_api_anomalies_total ")]
    assert anomalies and float(anomalies[0].split()[1]) >= 1
    assert f'uba_api_model_info{{baseline_as_of="{SCORE_DAY}",model_version="{world.version}"}} 1.0' in text


# ------------------------------------------------------------------ malformed input

J = {"content-type": "application/json"}


def _seed(**changes: Any) -> dict[str, Any]:
    body = {**SEED_PAYLOAD, **changes}
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()
BIG = "x" * 10_000

# (case id, path, request kwargs, expected status, field the error must name)
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("missing user_id", "/predict", {"json": _seed(user_id=_DROP)}, 422, "user_id"),
    ("missing event_type", "/predict", {"json": _seed(event_type=_DROP)}, 422, "event_type"),
    ("missing duration", "/predict", {"json": _seed(session_duration_sec=_DROP)}, 422, "session_duration_sec"),
    ("missing events_in_session", "/predict", {"json": _seed(events_in_session=_DROP)}, 422, "events_in_session"),
    ("missing device_type", "/predict", {"json": _seed(device_type=_DROP)}, 422, "device_type"),
    ("no hour and no timestamp", "/predict", {"json": _seed(hour_of_day=_DROP)}, 422, "hour_of_day"),
    ("bool user_id", "/predict", {"json": _seed(user_id=True)}, 422, "user_id"),
    ("float user_id", "/predict", {"json": _seed(user_id=1.5)}, 422, "user_id"),
    ("blank user_id", "/predict", {"json": _seed(user_id="   ")}, 422, "user_id"),
    ("huge user_id string", "/predict", {"json": _seed(user_id=BIG)}, 422, "user_id"),
    ("object user_id (nested garbage)", "/predict", {"json": _seed(user_id={"$gt": ""})}, 422, "user_id"),
    ("huge array user_id", "/predict", {"json": _seed(user_id=[0] * 20_000)}, 422, "user_id"),
    ("unknown event_type", "/predict", {"json": _seed(event_type="hack")}, 422, "event_type"),
    ("int event_type", "/predict", {"json": _seed(event_type=5)}, 422, "event_type"),
    ("unknown device_type", "/predict", {"json": _seed(device_type="toaster")}, 422, "device_type"),
    ("negative duration", "/predict", {"json": _seed(session_duration_sec=-1)}, 422, "session_duration_sec"),
    ("string duration", "/predict", {"json": _seed(session_duration_sec="18000")}, 422, "session_duration_sec"),
    ("duration over max", "/predict", {"json": _seed(session_duration_sec=1e12)}, 422, "session_duration_sec"),
    ("NaN duration", "/predict",
     {"content": json.dumps(SEED_PAYLOAD).replace("18000", "NaN"), "headers": J}, 422, "session_duration_sec"),
    ("Infinity duration", "/predict",
     {"content": json.dumps(SEED_PAYLOAD).replace("18000", "Infinity"), "headers": J}, 422, "session_duration_sec"),
    ("zero events", "/predict", {"json": _seed(events_in_session=0)}, 422, "events_in_session"),
    ("negative events", "/predict", {"json": _seed(events_in_session=-3)}, 422, "events_in_session"),
    ("fractional events", "/predict", {"json": _seed(events_in_session=2.5)}, 422, "events_in_session"),
    ("bool for int", "/predict", {"json": _seed(events_in_session=True)}, 422, "events_in_session"),
    ("hour 24", "/predict", {"json": _seed(hour_of_day=24)}, 422, "hour_of_day"),
    ("hour -1", "/predict", {"json": _seed(hour_of_day=-1)}, 422, "hour_of_day"),
    ("day 7", "/predict", {"json": _seed(day_of_week=7)}, 422, "day_of_week"),
    ("day as name", "/predict", {"json": _seed(day_of_week="monday")}, 422, "day_of_week"),
    ("extra field", "/predict", {"json": _seed(is_admin=True)}, 422, "is_admin"),
    ("bad timestamp", "/predict", {"json": _seed(timestamp="yesterday")}, 422, "timestamp"),
    ("timestamp out of range in UTC", "/predict",
     {"json": _seed(timestamp="0001-01-01T00:00:00+01:00", hour_of_day=_DROP, day_of_week=_DROP)},
     422, "timestamp"),
    ("timestamp disagrees with hour", "/predict",
     {"json": _seed(timestamp="2026-03-10T05:00:00Z")}, 422, "hour_of_day"),
    ("timestamp disagrees with day", "/predict",
     {"json": _seed(timestamp="2026-03-11T02:00:00Z")}, 422, "day_of_week"),
    ("event_id too long", "/predict", {"json": _seed(event_id="e" * 300)}, 422, "event_id"),
    ("control char in session_id", "/predict", {"json": _seed(session_id="s\x001")}, 422, "session_id"),
    ("lone surrogate in user_id", "/predict", {"content": json.dumps(_seed(user_id="u\ud800")), "headers": J},
     422, "user_id"),
    ("lone surrogate in timestamp", "/predict",
     {"content": json.dumps(_seed(timestamp="2026-03-10T02:00:00\udfff")), "headers": J}, 422, "timestamp"),
    ("invalid JSON", "/predict", {"content": "{not json", "headers": J}, 422, "body"),
    ("empty body", "/predict", {"content": "", "headers": J}, 422, "body"),
    ("JSON array body", "/predict", {"content": "[1, 2]", "headers": J}, 422, "body"),
    ("JSON null body", "/predict", {"content": "null", "headers": J}, 422, "body"),
    ("deeply nested JSON", "/predict",
     {"content": '{"user_id": ' + "[" * 5000 + "]" * 5000 + "}", "headers": J}, 400, "body"),
    ("text/plain body", "/predict", {"content": json.dumps(SEED_PAYLOAD),
                                     "headers": {"content-type": "text/plain"}}, 415, "content-type"),
    ("form body", "/predict", {"data": {"user_id": "1"}}, 415, "content-type"),
    ("body over max_body_bytes", "/predict", {"json": _seed(user_id="u" * (MAX_BODY + 10))}, 413, "body"),
    ("batch over max_batch", "/predict/batch", {"json": {"events": [SEED_PAYLOAD] * (MAX_BATCH + 1)}},
     413, "events"),
    ("batch events not a list", "/predict/batch", {"json": {"events": SEED_PAYLOAD}}, 422, "events"),
    ("empty batch", "/predict/batch", {"json": {"events": []}}, 422, "events"),
    ("bad event inside batch", "/predict/batch",
     {"json": {"events": [SEED_PAYLOAD, SEED_PAYLOAD, _seed(hour_of_day=99)]}}, 422, "events.2.hour_of_day"),
    ("extra top-level batch field", "/predict/batch",
     {"json": {"events": [SEED_PAYLOAD], "dry_run": True}}, 422, "dry_run"),
]


@pytest.mark.parametrize(("path", "kwargs", "expected", "field"),
                         [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_malformed_request_gets_4xx_naming_the_field(
    client: httpx.Client, path: str, kwargs: dict[str, Any], expected: int, field: str
) -> None:
    response = client.post(path, **kwargs)
    assert response.status_code == expected, response.text
    errors = response.json()["detail"]
    assert any(e["field"] == field for e in errors), errors
    assert all(set(e) == {"field", "message", "value"} and e["message"] for e in errors)
    assert len(response.content) < 20_000  # huge inputs are not echoed back


def test_enough_malformed_cases() -> None:
    assert len(BAD_REQUESTS) >= 30


def test_streamed_body_without_length_is_cut_at_the_limit(client: httpx.Client) -> None:
    """A chunked upload declares no Content-Length; the bytes are counted as they arrive."""

    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"u" * 1024
        yield b'"}'

    response = client.post("/predict", content=chunks(), headers=J)
    assert response.status_code == 413
    assert response.json()["detail"][0]["field"] == "body"
    assert "content-length" not in {k.lower() for k in response.request.headers}


def test_over_limit_batch_message_names_the_limit(client: httpx.Client) -> None:
    response = client.post("/predict/batch", json={"events": [SEED_PAYLOAD] * (MAX_BATCH + 1)})
    message = response.json()["detail"][0]["message"]
    assert f"limit is {MAX_BATCH}" in message and "api.max_batch" in message


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Property-based requests from the app's own OpenAPI schema with every check: no 5xx,
    every status, header and body declared, and the schema neither looser nor stricter
    than the server (a body over api.max_batch items is refused with 413: a rejection)."""
    work = tmp_path_factory.mktemp("schemathesis")
    config = work / "schemathesis.toml"
    config.write_text("[checks.negative_data_rejection]\n"
                      "expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]\n")
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
        f"{server.url}/openapi.json", "--checks", "all", "--max-examples", "40", "--seed", "1",
        "--phases", "examples,coverage,fuzzing", "--no-shrink", "--workers", "1",  # with 2 threads, ast.parse races (SystemError, CPython 3.11)
        "--generation-database", "none",
        "--request-timeout", "10", "--exclude-path", "/admin/reload",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=work)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert counts is not None, result.stdout[-2000:]
    generated, passed = map(int, counts.groups())
    assert generated == passed >= 200
