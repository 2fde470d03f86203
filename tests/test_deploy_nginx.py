"""The repository's nginx site in front of the real API, over real HTTPS on loopback.

One module-scoped setup: a self-signed certificate from scripts/self-signed-cert.sh, a
model trained by the real CLI (`uba-batch generate` + `train`), `uba-api` on a free
127.0.0.1 port, and nginx started unprivileged with the config rendered by
scripts/render-nginx.sh on two more free ports. Rate limits are per client address,
so tests that must not share a bucket connect from different loopback addresses
(127.0.0.2, 127.0.0.3, ...: the whole of 127/8 is the loopback interface on Linux).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from api_world import started_url
from waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API_KEY = "deploy-test-key"
SEED_EVENT = {"user_id": 123, "event_type": "login", "session_duration_sec": 18000,
              "events_in_session": 190, "hour_of_day": 2, "day_of_week": 1, "device_type": "desktop"}

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("openssl") is None,
    reason="nginx and openssl binaries are needed (.ci/run installs them with apt-get)",
)


@dataclass(frozen=True)
class Proxy:
    https_port: int
    http_port: int
    api_port: int
    cert: Path
    prefix: Path

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "uba-access.log"

    def client(self, source: str = "127.0.0.1", **kwargs: object) -> httpx.Client:
        """An HTTPS client trusting only the test certificate, connecting from ``source``."""
        context = ssl.create_default_context(cafile=str(self.cert))
        transport = httpx.HTTPTransport(local_address=source, verify=context)
        return httpx.Client(transport=transport, base_url=self.https, timeout=10, **kwargs)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server this module started: its own process group, by id."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


class ServerExitedError(AssertionError):
    """The server stopped while coming up (its log says why: a taken port, a bad config)."""


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], verify: ssl.SSLContext | bool,
                      log: Path, timeout: float = 60) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise ServerExitedError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(url, verify=verify, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout, f"{url} to answer 200 (log {log})", interval=0.2)


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def trained(shared_world) -> tuple[Path, Path]:
    """Data and model dirs made by the real CLI (the session's generated and trained world;
    the server only reads them)."""
    return shared_world.data_dir, shared_world.model_dir


@pytest.fixture(scope="module")
def api(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`uba-api` (the image's default command) on a free loopback port."""
    data_dir, model_dir = trained
    log = tmp_path_factory.mktemp("api") / "api.log"
    env = {**os.environ, "UBA_API_KEYS": API_KEY, "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("wb") as out:
        process = subprocess.Popen(  # port 0: the server binds a free port and names it
            [str(BIN / "uba-api"), "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir),
             "--model-dir", str(model_dir), "--no-access-log"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True,
        )
    try:
        url = started_url(process, log, 60)
        _wait_until_ready(f"{url}/ready", process, False, log)
        yield int(url.rpartition(":")[2])
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def proxy(api: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """nginx running the repo's config (rendered by the repo's script) on high ports."""
    root = tmp_path_factory.mktemp("nginx")
    _run(REPO / "scripts" / "self-signed-cert.sh", root / "certs", "localhost", "2")
    cert = root / "certs" / "uba.crt"
    (root / "acme" / ".well-known" / "acme-challenge").mkdir(parents=True)
    (root / "acme" / ".well-known" / "acme-challenge" / "token123").write_text("token123.proof")
    # nginx takes the ports its config names (no port 0): ports that were free a moment ago
    # may be taken by the time it binds, so a start that fails is retried on new ones
    for attempt in range(3):
        http_port, https_port = _unused_port(), _unused_port()
        prefix = root / f"prefix-{attempt}"
        process = _start_nginx(root, prefix, api, http_port, https_port)
        try:
            _wait_until_ready(f"https://127.0.0.1:{https_port}/health", process,
                              ssl.create_default_context(cafile=str(cert)), prefix / "logs" / "stderr.log")
        except ServerExitedError as exc:
            _stop(process)
            if attempt == 2 or "Address already in use" not in str(exc) + _startup_log(prefix):
                raise
            continue
        except BaseException:
            _stop(process)
            raise
        try:
            yield Proxy(https_port, http_port, api, cert, prefix)
        finally:
            _stop(process)
        return


def _unused_port() -> int:
    """A port nobody listens on now (nginx binds it itself; see the retry in ``proxy``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _startup_log(prefix: Path) -> str:
    log = prefix / "logs" / "startup.log"
    return log.read_text() if log.exists() else ""


def _start_nginx(root: Path, prefix: Path, api: int, http_port: int, https_port: int) -> subprocess.Popen[bytes]:
    """The repo's config rendered by the repo's script for these ports, nginx started on it."""
    env = {
        **os.environ,
        "UBA_NGINX_CERT": str(root / "certs" / "uba.crt"),
        "UBA_NGINX_CERT_KEY": str(root / "certs" / "uba.key"),
        "UBA_NGINX_BIND": "127.0.0.1",
        "UBA_NGINX_HTTP_PORT": str(http_port),
        "UBA_NGINX_HTTPS_PORT": str(https_port),
        "UBA_NGINX_UPSTREAM": f"127.0.0.1:{api}",
        "UBA_NGINX_ACME_ROOT": str(root / "acme"),
    }
    for name in ("UBA_NGINX_RATE", "UBA_NGINX_BURST", "UBA_NGINX_MAX_BODY", "UBA_NGINX_METRICS_ALLOW"):
        env.pop(name, None)  # the shipped defaults are what is tested
    _run(REPO / "scripts" / "render-nginx.sh", "--standalone", prefix, env=env)
    globals_ = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    startup_log = prefix / "logs" / "startup.log"
    with (prefix / "logs" / "stderr.log").open("wb") as out:
        return subprocess.Popen(
            ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(startup_log),
             "-g", globals_],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _log_entries(proxy: Proxy, request_id: str) -> list[dict[str, object]]:
    def entries() -> list[dict[str, object]]:
        return [json.loads(line) for line in proxy.access_log.read_text().splitlines() if request_id in line]

    return wait_until(entries, 10, f"nginx's access line of {request_id}")  # written just after the response


def _handshake(proxy: Proxy, version: ssl.TLSVersion, ciphers: str = "DEFAULT:@SECLEVEL=0") -> str:
    """Offer exactly one TLS version (legacy ones allowed on the client side) and report it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(proxy.cert))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", proxy.https_port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return f"{tls.version()} {tls.cipher()[0]}"


def test_predict_works_through_the_proxy(proxy: Proxy) -> None:
    with proxy.client() as client:
        refused = client.post("/predict", json=SEED_EVENT)
        answer = client.post("/predict", json=SEED_EVENT, headers={"X-API-Key": API_KEY})
    assert refused.status_code == 401, refused.text  # the key header travels through nginx
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {"anomaly_score", "is_anomaly", "threshold_percentile", "model_version"} <= body.keys()
    assert 0 < body["anomaly_score"] <= 1
    assert answer.http_version == "HTTP/1.1" and answer.url.scheme == "https"


def test_plain_http_redirects_to_https_keeping_path_and_method(proxy: Proxy) -> None:
    with httpx.Client(timeout=5) as client:
        get = client.get(f"http://127.0.0.1:{proxy.http_port}/ready?verbose=1")
        post = client.post(f"http://127.0.0.1:{proxy.http_port}/predict", json=SEED_EVENT)
    for response, path in ((get, "/ready?verbose=1"), (post, "/predict")):
        assert response.status_code in (301, 308), response.text
        assert response.headers["location"] == f"https://127.0.0.1:{proxy.https_port}{path}"
    assert post.status_code == 308  # a POST is re-sent as a POST, body included


def test_acme_challenge_is_served_over_plain_http(proxy: Proxy) -> None:
    response = httpx.get(f"http://127.0.0.1:{proxy.http_port}/.well-known/acme-challenge/token123", timeout=5)
    assert response.status_code == 200
    assert response.text == "token123.proof"


def test_hsts_and_security_headers_on_every_answer(proxy: Proxy) -> None:
    with proxy.client(source="127.0.0.4") as client:
        ok = client.get("/health")
        missing = client.get("/no-such-route")
    for response in (ok, missing):
        hsts = response.headers.get("strict-transport-security", "")
        assert re.fullmatch(r"max-age=(\d+); includeSubDomains", hsts), hsts
        assert int(hsts.split("=")[1].split(";")[0]) >= 31_536_000  # at least a year
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "server" not in response.headers or "/" not in response.headers["server"]  # no version
    assert ok.status_code == 200 and missing.status_code == 404


def test_oversized_body_is_refused_by_nginx_before_the_api(proxy: Proxy) -> None:
    request_id = "oversized-body-1"
    body = b'{"user_id": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    with proxy.client(source="127.0.0.5") as client:
        response = client.post("/predict", content=body, headers={
            "content-type": "application/json", "X-API-Key": API_KEY, "X-Request-ID": request_id})
    assert response.status_code == 413
    assert "strict-transport-security" in response.headers
    (entry,) = _log_entries(proxy, request_id)
    assert entry["status"] == 413
    assert entry["upstream_addr"] == "" and entry["upstream_response_time"] == ""  # never proxied


def test_a_burst_over_the_rate_limit_gets_429_for_that_client_only(proxy: Proxy) -> None:
    statuses: list[int] = []
    started = time.monotonic()
    with proxy.client(source="127.0.0.2") as client:
        # As fast as one client can go; stop a little after the first refusal. Even on a
        # loaded machine 200 requests outpace 10 r/s unless each takes over 50 ms.
        while len(statuses) < 200 and statuses.count(429) < 5:
            statuses.append(client.get("/health").status_code)
    elapsed = time.monotonic() - started
    with proxy.client(source="127.0.0.3") as other:
        other_status = other.get("/health").status_code
    assert set(statuses) == {200, 429}, statuses
    assert statuses[:21] == [200] * 21  # rate 10r/s with burst 20: the first 21 pass at once
    assert statuses.count(200) <= 21 + int(elapsed * 10) + 1
    assert other_status == 200  # another client has its own budget


def test_legacy_tls_versions_are_refused(proxy: Proxy) -> None:
    for legacy in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError) as refused:
            _handshake(proxy, legacy)
        # The server's "protocol version" alert, not a client that could not offer it.
        assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value
    assert _handshake(proxy, ssl.TLSVersion.TLSv1_2).startswith("TLSv1.2 ECDHE-")
    assert _handshake(proxy, ssl.TLSVersion.TLSv1_3).startswith("TLSv1.3 ")


def test_weak_tls12_ciphers_are_refused(proxy: Proxy) -> None:
    # CBC + SHA-1 and static-RSA key exchange: offered alone, the server must refuse them.
    for weak in ("ECDHE-ECDSA-AES128-SHA", "AES128-GCM-SHA256"):
        with pytest.raises(ssl.SSLError):
            _handshake(proxy, ssl.TLSVersion.TLSv1_2, f"{weak}:@SECLEVEL=0")


def test_openssl_s_client_cannot_speak_tls1_or_tls11(proxy: Proxy) -> None:
    options = subprocess.run(["openssl", "s_client", "-help"], capture_output=True, text=True).stderr
    connect = ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.https_port}",
               "-servername", "localhost", "-cipher", "DEFAULT:@SECLEVEL=0"]
    checked = 0
    for flag in ("-tls1", "-tls1_1"):
        if flag + " " not in options:
            continue  # this openssl build has no such protocol to offer
        result = subprocess.run([*connect, flag], input="", capture_output=True, text=True, timeout=10)
        assert result.returncode != 0
        assert "alert protocol version" in result.stderr, result.stderr
        checked += 1
    control = subprocess.run([*connect, "-tls1_2"], input="", capture_output=True, text=True, timeout=10)
    assert control.returncode == 0, control.stderr
    assert checked >= 1


def test_request_id_is_kept_minted_or_replaced_and_logged_with_upstream_latency(proxy: Proxy) -> None:
    with proxy.client(source="127.0.0.6") as client:
        kept = client.get("/ready", headers={"X-Request-ID": "trace-42.a_b:c"})
        minted = client.get("/ready")
        replaced = client.get("/ready", headers={"X-Request-ID": "two words <script>"})
    assert kept.headers["x-request-id"] == "trace-42.a_b:c"
    assert re.fullmatch(r"[0-9a-f]{32}", minted.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])
    assert minted.headers["x-request-id"] != replaced.headers["x-request-id"]
    assert kept.headers.get_list("x-request-id") == ["trace-42.a_b:c"]  # one id, not two
    for response in (kept, minted):
        (entry,) = _log_entries(proxy, response.headers["x-request-id"])
        assert entry["status"] == 200 and entry["uri"] == "/ready"
        assert entry["upstream_addr"] == f"127.0.0.1:{proxy.api_port}"
        assert 0 <= float(entry["upstream_response_time"]) <= float(entry["request_time"]) + 0.001


def test_metrics_are_only_for_the_allowed_address(proxy: Proxy) -> None:
    with proxy.client() as local, proxy.client(source="127.0.0.7") as outsider:
        allowed = local.get("/metrics")
        denied = outsider.get("/metrics")
    assert allowed.status_code == 200 and "# TYPE" in allowed.text
    assert denied.status_code == 403
