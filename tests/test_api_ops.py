"""Operating the API: start without a model, hot reload, broken bundles, API keys, uba-api."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from api_world import SEED_PAYLOAD, running_server, started_url, train_bundle
from test_api_workers import served_by_worker
from waiting import holds_throughout, wait_until
from worlds import SCORE_DAY, World, training_days

from uba import io
from uba.alerting.feedback import add_rule, known_reason_kinds, remove_rule
from uba.model.bundle import FOREST_FILE


@pytest.fixture(scope="module")
def world(serving_world: World) -> World:
    return serving_world


def test_uba_api_starts_without_a_model_then_reload_brings_it(world: World, tmp_path: Path) -> None:
    empty_data, empty_models = tmp_path / "data", tmp_path / "models"
    flags = ["--data-dir", str(empty_data), "--model-dir", str(empty_models), "--no-access-log"]
    with running_server(world.env(), tmp_path / "api.log", uba_api=flags) as server, server.client() as c:
        ready = c.get("/ready")
        assert ready.status_code == 503 and "no model directory" in ready.json()["reason"]
        refused = c.post("/predict", json=SEED_PAYLOAD)
        assert refused.status_code == 503 and "no model loaded" in refused.json()["detail"]
        assert c.get("/model").status_code == 503
        assert c.post("/admin/reload").status_code == 409
        assert "uba_api_model_loaded 0.0" in c.get("/metrics").text

        # a bundle and a snapshot appear (as after `train`): reload makes the server ready
        import shutil

        shutil.copytree(world.model_dir, empty_models)
        snapshot = io.latest_baseline_snapshot(world.data_dir)
        assert snapshot is not None
        io.write_baseline_snapshot(io.read_baseline_snapshot(snapshot[1]), empty_data, snapshot[0])
        reloaded = c.post("/admin/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["previous_model_version"] is None
        assert c.get("/ready").status_code == 200
        assert c.post("/predict", json=SEED_PAYLOAD).json()["model_version"] == world.version


@pytest.fixture
def own_world(world: World, tmp_path: Path) -> World:
    return world.copy(tmp_path / "world")


class Traffic:
    """Posts /predict and /predict/batch in a loop from a thread, recording every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                for response in (client.post("/predict", json=SEED_PAYLOAD),
                                 client.post("/predict/batch", json={"events": [SEED_PAYLOAD] * 5})):
                    self.statuses.append(response.status_code)
                    if response.status_code == 200:
                        self.versions.append(response.json()["model_version"])

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _wait_for_requests(traffic: Traffic, count: int) -> None:
    start = len(traffic.statuses)
    wait_until(lambda: len(traffic.statuses) >= start + count, 10, f"{count} more answered requests")


def test_hot_reload_swaps_without_failed_requests_and_refuses_a_broken_bundle(
    own_world: World, tmp_path: Path
) -> None:
    settings = own_world.settings(random_state=7)
    baselines = io.read_baseline_snapshot(io.latest_baseline_snapshot(own_world.data_dir)[1])
    with running_server(own_world.env(), tmp_path / "api.log") as server, server.client() as c:
        with Traffic(server.url) as traffic:
            _wait_for_requests(traffic, 4)
            new_version, _ = train_bundle(settings, training_days(), baselines)
            assert new_version != own_world.version
            reloaded = c.post("/admin/reload")
            assert reloaded.status_code == 200, reloaded.text
            body = reloaded.json()
            assert body["changed"] and body["model_version"] == new_version
            assert body["previous_model_version"] == own_world.version
            _wait_for_requests(traffic, 4)
        assert traffic.statuses and set(traffic.statuses) == {200}
        assert traffic.versions[0] == own_world.version and traffic.versions[-1] == new_version

        # a newer snapshot alone is picked up too
        newer = SCORE_DAY + timedelta(days=1)
        io.write_baseline_snapshot(baselines, own_world.data_dir, newer)
        assert c.post("/admin/reload").json()["baseline_as_of"] == newer.isoformat()

        # a tampered bundle becomes LATEST: refused, the previous one keeps serving
        broken, _ = train_bundle(own_world.settings(random_state=8), training_days(), baselines)
        forest = own_world.model_dir / broken / FOREST_FILE
        data = bytearray(forest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        forest.write_bytes(bytes(data))
        with Traffic(server.url) as traffic:
            refused = c.post("/admin/reload")
            _wait_for_requests(traffic, 2)
        assert refused.status_code == 409
        assert broken in refused.json()["detail"] and new_version in refused.json()["detail"]
        assert set(traffic.statuses) == {200} and set(traffic.versions) == {new_version}
        assert c.get("/ready").json()["model_version"] == new_version
        assert 'uba_api_reloads_total{outcome="refused"} 1.0' in c.get("/metrics").text


@pytest.fixture(scope="module")
def keyed_server(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("keyed")
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# rotated 2026-03\nfile-key-1\n")
    env = world.env(UBA_API_KEYS="env-key-1, env-key-2", UBA_API__API_KEY_FILE=str(key_file))
    with running_server(env, tmp_path / "api.log") as server:
        yield server.url


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""},
                                     {"Authorization": "env-key-1"}])
def test_api_key_required_when_configured(keyed_server: str, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=keyed_server, headers=headers) as c:
        for method, path, kwargs in (("post", "/predict", {"json": SEED_PAYLOAD}),
                                     ("post", "/predict/batch", {"json": {"events": [SEED_PAYLOAD]}}),
                                     ("get", "/model", {}), ("post", "/admin/reload", {})):
            response = getattr(c, method)(path, **kwargs)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["detail"][0]["field"] == "X-API-Key"
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 200
        assert c.get("/metrics").status_code == 200
        # the API description stays open, as docs/api.md says (schemathesis and operators read it)
        schema = c.get("/openapi.json")
        assert schema.status_code == 200 and "/predict" in schema.json()["paths"]
        assert c.get("/docs").status_code == 200 and c.get("/redoc").status_code == 200


@pytest.mark.parametrize("key", ["env-key-1", "env-key-2", "file-key-1"])
def test_any_configured_key_is_accepted(keyed_server: str, key: str) -> None:
    with httpx.Client(base_url=keyed_server, headers={"X-API-Key": key}) as c:
        response = c.post("/predict", json=SEED_PAYLOAD)
        assert response.status_code == 200, response.text
        assert np.isfinite(response.json()["anomaly_score"])


def test_configured_key_file_that_is_missing_or_empty_fails_closed(tmp_path: Path) -> None:
    from uba.api.auth import load_api_keys
    from uba.errors import UserError
    from uba.settings import ApiSettings

    with pytest.raises(UserError, match="cannot read api.api_key_file"):
        load_api_keys(ApiSettings(api_key_file=tmp_path / "absent"), env={})
    empty = tmp_path / "empty"
    empty.write_text("# no keys yet\n\n")
    with pytest.raises(UserError, match="holds no keys"):
        load_api_keys(ApiSettings(api_key_file=empty), env={})
    assert load_api_keys(ApiSettings(), env={}) == ()
    assert load_api_keys(ApiSettings(), env={"UBA_API_KEYS": " a , b,a"}) == (b"a", b"b")


def _metric(text: str, name: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


def test_periodic_reload_picks_up_new_bundles_and_snapshots_and_skips_broken_ones(
    own_world: World, tmp_path: Path
) -> None:
    env = own_world.env(UBA_API__RELOAD_INTERVAL_SEC="0.3")
    baselines = io.read_baseline_snapshot(io.latest_baseline_snapshot(own_world.data_dir)[1])
    ok = 'uba_api_reloads_total{outcome="ok"}'
    refused = 'uba_api_reloads_total{outcome="refused"}'
    with running_server(env, tmp_path / "api.log") as server, server.client() as c:
        # several intervals with nothing new on disk: no reload at all
        holds_throughout(lambda: _metric(c.get("/metrics").text, ok) == 0, 1.2, "no reload with nothing new")
        assert c.get("/model").json()["model_version"] == own_world.version

        newer = SCORE_DAY + timedelta(days=1)
        io.write_baseline_snapshot(baselines, own_world.data_dir, newer)
        new_version, _ = train_bundle(own_world.settings(random_state=7), training_days(), baselines)
        wait_until(lambda: c.get("/model").json()["model_version"] == new_version, 30,
                   f"the periodic reload to serve {new_version}")
        info = c.get("/model").json()
        assert info["baseline_as_of"] == newer.isoformat()
        assert c.post("/predict", json=SEED_PAYLOAD).json()["model_version"] == new_version
        swaps = _metric(c.get("/metrics").text, ok)
        assert 1 <= swaps <= 2  # the snapshot and the bundle, together or one after the other
        holds_throughout(lambda: _metric(c.get("/metrics").text, ok) == swaps, 1.2,
                         "no further reloads on an unchanged disk")

        # a tampered bundle becomes LATEST: refused once, not retried every interval, old one serves
        broken, _ = train_bundle(own_world.settings(random_state=8), training_days(), baselines)
        forest = own_world.model_dir / broken / FOREST_FILE
        data = bytearray(forest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        forest.write_bytes(bytes(data))
        wait_until(lambda: _metric(c.get("/metrics").text, refused) >= 1, 30, "the tampered bundle refused")
        holds_throughout(lambda: _metric(c.get("/metrics").text, refused) == 1, 1.2,
                         "the tampered bundle refused once, not every interval")
        assert c.get("/model").json()["model_version"] == new_version
        assert c.post("/predict", json=SEED_PAYLOAD).status_code == 200
    log = (tmp_path / "api.log").read_text()
    assert "reload refused" in log and broken in log
    assert "Traceback" not in log  # the loop was cancelled cleanly at shutdown


def test_request_id_is_echoed_or_minted_and_in_the_access_log(world: World, tmp_path: Path) -> None:
    flags = ["--data-dir", str(world.data_dir), "--model-dir", str(world.model_dir), "--log-format", "json"]
    with running_server(world.env(), tmp_path / "api.log", uba_api=flags) as server, server.client() as c:
        kept = c.post("/predict", json=SEED_PAYLOAD, headers={"X-Request-ID": "trace-42.a_b:c"})
        minted = c.post("/predict", json=SEED_PAYLOAD)
        replaced = c.get("/ready", headers={"X-Request-ID": "two words <script>"})
        invalid = c.post("/predict", json={"user_id": 1}, headers={"X-Request-ID": "bad-input-7"})
        missing = c.get("/no/such/path", headers={"X-Request-ID": "lost-8"})
    assert kept.status_code == 200 and kept.headers.get_list("x-request-id") == ["trace-42.a_b:c"]
    assert re.fullmatch(r"[0-9a-f]{32}", minted.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])
    assert minted.headers["x-request-id"] != replaced.headers["x-request-id"]
    assert invalid.status_code == 422 and invalid.headers["x-request-id"] == "bad-input-7"
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "lost-8"

    entries = [json.loads(line) for line in (tmp_path / "api.log").read_text().splitlines()
               if line.startswith("{")]
    access = {e["request_id"]: e for e in entries if e.get("logger") == "uba.api.access"}
    for response, path in ((kept, "/predict"), (minted, "/predict"), (replaced, "/ready"),
                           (invalid, "/predict"), (missing, "/no/such/path")):
        entry = access[response.headers["x-request-id"]]
        assert entry["path"] == path and entry["status"] == response.status_code
        assert entry["duration_ms"] >= 0 and response.headers["x-request-id"] in entry["msg"]


def _stamped(user: str, day: date) -> dict[str, object]:
    """The seed event for ``user`` on ``day`` at 02:00 UTC (timestamp instead of hour/day)."""
    event = {k: v for k, v in SEED_PAYLOAD.items() if k not in ("hour_of_day", "day_of_week")}
    return {**event, "user_id": user, "timestamp": f"{day.isoformat()}T02:00:00Z"}


def test_suppression_rules_reach_predict_on_reload_like_the_nightly_job(own_world: World, tmp_path: Path) -> None:
    env = own_world.env(UBA_API__RELOAD_INTERVAL_SEC="0.3")
    data = own_world.data_dir
    with running_server(env, tmp_path / "api.log") as server, server.client() as c:
        before = c.post("/predict", json=SEED_PAYLOAD).json()
        assert before["is_anomaly"] and before["suppressed"] is False and before["suppressed_by"] is None
        kind = before["reason_kinds"][0]
        other = next(k for k in known_reason_kinds() if k != kind)

        rule = add_rule(data, "123", kind, known_reason_kinds())
        add_rule(data, "124", kind, known_reason_kinds(), expires=SCORE_DAY, today=SCORE_DAY)
        add_rule(data, "125", other, known_reason_kinds())  # right user, wrong top kind
        # the periodic reloader notices the new rule parts (bundle and snapshot unchanged)
        wait_until(lambda: c.get("/model").json()["suppression_rules"] == 2, 30, "two suppression rules")  # 124's rule expired

        hit = c.post("/predict", json=SEED_PAYLOAD).json()
        assert hit["is_anomaly"] is True and hit["suppressed"] is True and hit["suppressed_by"] == rule
        miss = c.post("/predict", json={**SEED_PAYLOAD, "user_id": 999}).json()
        assert miss["is_anomaly"] is True and miss["suppressed"] is False
        batch = c.post("/predict/batch", json={"events": [
            _stamped("124", SCORE_DAY), _stamped("124", SCORE_DAY + timedelta(days=1)),
            _stamped("125", SCORE_DAY), _stamped("123", SCORE_DAY)]}).json()
        # the expiry is judged on each event's own UTC day: inclusive on SCORE_DAY, over the day after
        assert [p["suppressed"] for p in batch["predictions"]] == [True, False, False, True]
        assert all(p["is_anomaly"] for p in batch["predictions"])
        assert batch["anomalies"] == 4 and batch["suppressed"] == 2

        assert c.post("/admin/reload").json()["changed"] is False  # nothing new on disk
        remove_rule(data, rule)
        reloaded = c.post("/admin/reload").json()
        assert reloaded["changed"] is True
        after = c.post("/predict", json=SEED_PAYLOAD).json()
        assert after["is_anomaly"] is True and after["suppressed"] is False


def test_refused_reload_answers_a_short_reason_and_logs_the_whole_one(own_world: World, tmp_path: Path) -> None:
    snapshot = io.latest_baseline_snapshot(own_world.data_dir)
    assert snapshot is not None
    # a newer snapshot without a column the feature code needs: Polars fails with its query plan
    baselines = io.read_baseline_snapshot(snapshot[1])
    broken = baselines.drop("mean_log_duration")
    with running_server(own_world.env(), tmp_path / "api.log") as server, server.client() as c:
        io.write_baseline_snapshot(broken, own_world.data_dir, SCORE_DAY + timedelta(days=1))
        refused = c.post("/admin/reload")
        assert c.get("/model").json()["baseline_as_of"] == SCORE_DAY.isoformat()  # old pair still serves
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert detail.startswith("reload refused: ") and "\n" not in detail
    assert len(detail) <= 300 + 120 and detail.endswith(f"still serving {own_world.version}")
    log = (tmp_path / "api.log").read_text()
    assert "reload refused" in log and len(log) > len(detail) + 500  # the whole reason is logged


def test_access_log_escapes_control_characters_so_a_url_cannot_forge_a_line(world: World, tmp_path: Path) -> None:
    flags = ["--data-dir", str(world.data_dir), "--model-dir", str(world.model_dir)]  # text log format
    forged = "2026-01-01 00:00:00,000 INFO uba.api.access: 10.0.0.1 \"POST /admin/reload\" 200"
    raw = "/no/such%0a" + forged.replace(" ", "%20").replace('"', "%22") + "%0d%1b[31m%5c"
    with running_server(world.env(), tmp_path / "api.log", uba_api=flags) as server, server.client() as c:
        missing = c.get(raw, headers={"X-Request-ID": "forge-1"})
    assert missing.status_code == 404
    lines = (tmp_path / "api.log").read_text().splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines)  # no forged line
    assert "\x1b" not in "\n".join(lines)
    (access,) = [line for line in lines if "request_id=forge-1" in line]
    assert '"GET /no/such\\x0a2026-01-01 00:00:00,000 INFO' in access
    assert '\\"POST /admin/reload\\" 200\\x0d\\x1b[31m\\\\" 404' in access


def test_two_workers_add_up_their_metrics_and_all_follow_one_reload(own_world: World, tmp_path: Path) -> None:
    """``uba-api --workers 2``: a request reaches one worker, yet /metrics counts every
    request whichever worker answers the scrape, and one POST /admin/reload moves both."""
    flags = ["--workers", "2", "--no-access-log"]
    baselines = io.read_baseline_snapshot(io.latest_baseline_snapshot(own_world.data_dir)[1])
    with running_server(own_world.env(), tmp_path / "api.log", uba_api=flags) as server:
        sent = 0
        while sent < 200 and len(served_by_worker(httpx.get(server.url + "/metrics").text)) < 2:
            for _ in range(10):  # a fresh connection each: the kernel hands them to either worker
                assert httpx.post(server.url + "/predict", json=SEED_PAYLOAD).status_code == 200
                sent += 1
        workers = served_by_worker(httpx.get(server.url + "/metrics").text)
        assert len(workers) == 2 and set(workers.values()) == {own_world.version}, workers
        for _ in range(6):  # every scrape, from either worker, has every request
            text = httpx.get(server.url + "/metrics").text
            assert _metric(text, 'uba_api_requests_total{method="POST",route="/predict",status="200"}') == sent
            assert _metric(text, 'uba_api_events_scored_total{known_user="false"}') == sent
            assert _metric(text, "uba_api_model_loaded") == 1

        new_version, _ = train_bundle(own_world.settings(random_state=7), training_days(), baselines)
        reloaded = httpx.post(server.url + "/admin/reload")
        assert reloaded.status_code == 200 and reloaded.json()["model_version"] == new_version
        wait_until(lambda: set(served_by_worker(httpx.get(server.url + "/metrics").text).values())
                   == {new_version}, 10, f"every worker to serve {new_version}")
        assert served_by_worker(httpx.get(server.url + "/metrics").text).keys() == workers.keys()
        answers = {httpx.post(server.url + "/predict", json=SEED_PAYLOAD).json()["model_version"]
                   for _ in range(20)}
        assert answers == {new_version}
    log = (tmp_path / "api.log").read_text()
    assert log.count(f"reloaded: model {new_version}") == 2 and "Traceback" not in log


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the peer closed the connection (EOF or reset waiting to be read); reads nothing."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)
        sock.settimeout(10)


def _get_on(sock: socket.socket, path: str) -> bytes:
    """One whole answer (head and body: they may come in separate reads), b"" once closed."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    answer = b""
    while True:
        chunk = sock.recv(65536)
        answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        if not chunk or (length and len(body) >= int(length.group(1))):
            return answer


def test_kept_alive_connections_outlive_a_proxys_idle_timeout(world: World, tmp_path: Path) -> None:
    """uvicorn's own default closed idle connections after 5 s: a client (or proxy) reusing
    one after 5-6 s of quiet lost that request ('Server disconnected without sending a
    response', seen by the hostile-load benchmark's reloader posting every 5 s)."""
    flags = ["--no-access-log"]
    for keep_alive, idle, alive in ((None, 6.0, True), ("1", 4.0, False)):  # 3 s of slack on a busy machine
        env = world.env() if keep_alive is None else world.env(UBA_API__KEEP_ALIVE_SEC=keep_alive)
        with running_server(env, tmp_path / "api.log", uba_api=flags) as server:
            host, port = server.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                assert _get_on(sock, "/health").startswith(b"HTTP/1.1 200")
                if alive:  # quiet past uvicorn's own 5 s, watched throughout: never closed
                    holds_throughout(lambda: not _closed_by_server(sock), idle, "the idle connection open")
                else:  # the configured keep-alive closes it, well before `idle`
                    wait_until(lambda: _closed_by_server(sock), idle, "the server to close the idle connection")
                try:
                    again = _get_on(sock, "/health")
                except (ConnectionResetError, BrokenPipeError):
                    again = b""
                assert again.startswith(b"HTTP/1.1 200") is alive, (keep_alive, again[:80])


def test_plain_uvicorn_logs_each_request_once(world: World, tmp_path: Path) -> None:
    """``uvicorn uba.api.app:app`` without ``--no-access-log``: uvicorn's own access line
    came on top of the app's (which carries the request id)."""
    log = tmp_path / "api.log"
    cmd = [sys.executable, "-m", "uvicorn", "uba.api.app:app", "--host", "127.0.0.1", "--port", "0"]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, env=world.env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        url = started_url(process, log)
        wait_until(lambda: _answers(url + "/health"), 30, f"{url}/health")
        assert httpx.post(url + "/predict", json=SEED_PAYLOAD).status_code == 200
        # a later request's app line is written after any line of the /predict before it
        assert httpx.get(url + "/model").status_code == 200
        wait_until(lambda: any("/model" in line and "request_id=" in line for line in log.read_text().splitlines()),
                   30, "the app's access line of GET /model")
    finally:
        process.terminate()
        process.wait(timeout=10)
    lines = [line for line in log.read_text().splitlines() if "/predict" in line]
    assert len(lines) == 1 and "request_id=" in lines[0], lines


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
