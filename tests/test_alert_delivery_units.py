"""Alert delivery in small pieces: signatures with two secrets, CEF and RFC 5424 escaping,
backoff bounds, 4xx bisection to dead letters, per-sink ordering, the ledger's
insert-or-ignore. Delivery runs against a real http.server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from alert_receivers import Behaviour, RawWebhook, WebhookReceiver
from waiting import wait_until

from uba.alerting.delivery import ReadySink, _SinkRun, backoff_delay, check_sinks, deliver
from uba.alerting.ledger import Entry, Ledger, outbox_rows, retry_dead_letters, sink_states
from uba.alerting.payloads import (
    cef_header_escape,
    cef_value_escape,
    delivery_id,
    octet_frame,
    sd_param_escape,
    syslog_message,
    to_cef,
    webhook_body,
)
from uba.alerting.signing import parse_signature, sign, verify_signature
from uba.alerting.transport import classify_status, retry_after_seconds, sender_for
from uba.errors import UserError
from uba.settings import Settings, SyslogSink, WebhookSink, load_settings

DAY = date(2026, 3, 9)


# --- signatures -------------------------------------------------------------------------


def test_signature_header_carries_one_v1_per_secret_and_verifies_with_either() -> None:
    body = b'{"alert_ids": ["uba-1"]}'
    old, new = b"old-secret", b"new-secret"
    header = sign(body, [new, old], timestamp=1_700_000_000)
    assert re.fullmatch(r"t=1700000000,v1=[0-9a-f]{64},v1=[0-9a-f]{64}", header)
    t, macs = parse_signature(header)
    assert t == 1_700_000_000 and len(set(macs)) == 2
    now = 1_700_000_100
    assert verify_signature(header, body, [new], now=now)  # a receiver already rotated
    assert verify_signature(header, body, [old], now=now)  # a receiver not yet rotated
    assert not verify_signature(header, body, [b"other"], now=now)
    assert not verify_signature(header, body + b" ", [new], now=now), "the body is signed"
    assert not verify_signature(header.replace("t=1700000000", "t=1700000001"), body, [new], now=now), "t is signed"
    assert not verify_signature(header, body, [new], now=now + 301), "replays outside the window are refused"
    assert not verify_signature(header, body, [new], now=t - 301), "so are timestamps from the future"
    assert not verify_signature(None, body, [new]) and not verify_signature("v1=ab", body, [new])
    single = sign(body, [new], timestamp=5)
    assert single.count("v1=") == 1 and verify_signature(single, body, [new], now=5)


# --- payloads ----------------------------------------------------------------------------


def _record(**extra: Any) -> dict[str, Any]:
    return {"alert_id": "uba-0123456789abcdef01234567", "alert_type": "event", "user_id": "u|1\\x=y",
            "time": datetime(2026, 3, 9, 2, 30, 0, 123456, tzinfo=UTC), "event_date": DAY, "event_id": "e=1",
            "score": 0.6512345678901234, "threshold": 0.6, "severity": "medium",
            "reasons": ["login at 02:00, usual 09:00", "a=b\nnext line \\ end"], "reason_kinds": ["hour", "global"],
            "model_version": "v1", "run_id": "r1", "run_ref": "runs/event_date=2026-03-09/manifest.json#run=r1",
            **extra}


def test_cef_escaping_follows_the_specification() -> None:
    assert cef_header_escape("a|b\\c") == "a\\|b\\\\c"
    assert cef_value_escape("a=b\\c|d\ne\rf") == "a\\=b\\\\c|d\\ne\\rf"  # the pipe is literal in extensions
    cef = to_cef(_record())
    header = cef.split("|", 7)
    assert cef.startswith("CEF:0|UBA|UBA|") and "Unusual activity for this user: u\\|1\\\\x=y" in cef
    assert "|5|" in cef, "medium is CEF severity 5"
    assert "suser=u|1\\\\x\\=y" in cef and "cs4=e\\=1" in cef
    assert "msg=login at 02:00, usual 09:00 | a\\=b\\nnext line \\\\ end" in cef
    assert "cfp1=0.6512345678901234" in cef, "scores keep full precision"
    assert "\n" not in cef and len(header) == 8


def test_rfc5424_message_and_octet_framing() -> None:
    sink = SyslogSink(name="s", host="127.0.0.1", payload="json", app_name="uba")
    message = syslog_message(_record(user_id="ü"), sink, hostname="host-1")
    assert message.startswith('<84>1 2026-03-09T02:30:00.123456Z host-1 uba - EVENT '
                              '[uba@32473 alert_id="uba-0123456789abcdef01234567" event_date="2026-03-09" '
                              'severity="medium"] {')
    assert json.loads(message.split("] ", 1)[1])["user_id"] == "ü"
    framed = octet_frame(message)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) == len(message.encode("utf-8")) > len(message)
    assert sd_param_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'


def test_webhook_bodies_carry_the_export_ids_and_a_stable_delivery_id() -> None:
    sink = WebhookSink(name="hook", url="http://127.0.0.1:9/x", format="jsonl")
    body = json.loads(webhook_body(sink, ["uba-a", "uba-b"], ['{"n":1}', '{"n":2}']))
    assert body["alert_ids"] == ["uba-a", "uba-b"] and body["records"] == [{"n": 1}, {"n": 2}]
    assert body["delivery_id"] == delivery_id("hook", ["uba-a", "uba-b"]) != delivery_id("hook", ["uba-a"])
    slack = WebhookSink(name="chat", url="https://hooks.example.com/services/T/B/X", format="slack")
    assert json.loads(webhook_body(slack, ["uba-a"], ["line <1>"])) == {"text": "line <1>"}


# --- backoff and answers -------------------------------------------------------------------


def test_backoff_is_exponential_with_jitter_within_bounds() -> None:
    import random

    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 0.5, 8.0, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert max(delays) - min(delays) > ceiling / 4, "jittered"
    assert backoff_delay(3, 0.5, 8.0, retry_after=2.0) == 2.0
    assert backoff_delay(3, 0.5, 8.0, retry_after=3600) == 8.0, "Retry-After obeyed up to the cap"


def test_answers_are_classified_for_the_outbox() -> None:
    kinds = {s: classify_status(s, "", None).kind for s in (200, 204, 301, 400, 401, 403, 404, 408, 413, 422,
                                                            429, 500, 503)}
    assert kinds == {200: "ack", 204: "ack", 301: "stop", 400: "reject", 401: "stop", 403: "stop", 404: "stop",
                     408: "retry", 413: "reject", 422: "reject", 429: "retry", 500: "retry", 503: "retry"}
    assert classify_status(429, "Too Many", "7").retry_after == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("soon") is None


# --- delivery against a real receiver ------------------------------------------------------


def _settings(tmp_path: Path, url: str, **sink: Any) -> Settings:
    config = {"type": "webhook", "name": "hook", "url": url, "format": "jsonl", "batch_size": 4,
              "timeout_sec": 2, "max_attempts": 1, "backoff_base_sec": 0.01, "backoff_max_sec": 0.02, **sink}
    return load_settings(overrides={"paths": {"data_dir": tmp_path / "data", "output_dir": tmp_path / "out"},
                                    "alerting": {"sinks": [config]}}, env={})


def _enqueue(settings: Settings, days: dict[date, int]) -> list[str]:
    ids = []
    with Ledger.open(settings.paths.data_dir) as ledger:
        for day, n in days.items():
            entries = [Entry(f"uba-{day:%d}-{i:03d}", "event", f"u{i}",
                             json.dumps({"event_date": day.isoformat(), "i": i})) for i in range(n)]
            ledger.enqueue(day, "run-1", {"hook": entries})
            ids += [e.alert_id for e in entries]
    return ids


def _statuses(settings: Settings) -> dict[str, str]:
    with Ledger.open(settings.paths.data_dir) as ledger:
        return {r.alert_id: r.status for r in ledger.rows()}


@pytest.mark.integration  # a real server on 127.0.0.1
def test_a_refused_alert_is_found_by_bisection_and_dead_lettered(tmp_path: Path) -> None:
    bad = frozenset({"uba-09-005", "uba-10-002"})
    receiver = WebhookReceiver(behaviour=Behaviour(reject_ids=bad))
    try:
        settings = _settings(tmp_path, receiver.url)
        ids = _enqueue(settings, {date(2026, 3, 10): 4, DAY: 10})  # enqueued out of day order on purpose
        [report] = deliver(settings, check_sinks(settings, env={}))
        assert report.dead_lettered == 2 and report.delivered == 12 and report.stopped is None
        assert {a for a, s in _statuses(settings).items() if s == "failed"} == bad
        in_order = sorted(ids, key=lambda a: (a[4:6], int(a[7:])))
        assert receiver.ids() == [a for a in in_order if a not in bad], "day order, then queue order"
        with Ledger.open(settings.paths.data_dir) as ledger:
            [dead, _] = ledger.rows(status="failed")
            assert dead.alert_id == "uba-09-005" and dead.last_error.startswith("HTTP 400")
            assert ledger.retry_failed("hook", ["uba-09-005"]) == 1
        receiver.behaviour.reject_ids = frozenset()
        [again] = deliver(settings, check_sinks(settings, env={}))
        assert again.delivered == 1 and receiver.ids()[-1] == "uba-09-005"
    finally:
        receiver.down()


@pytest.mark.integration  # a real server on 127.0.0.1
def test_a_failing_sink_stops_without_skipping_ahead_then_resumes_in_order(tmp_path: Path) -> None:
    receiver = WebhookReceiver(behaviour=Behaviour(fail_requests=frozenset({3})))
    try:
        settings = _settings(tmp_path, receiver.url)
        ids = _enqueue(settings, {DAY: 10, date(2026, 3, 10): 6})
        [first] = deliver(settings, check_sinks(settings, env={}))
        assert first.delivered == 8 and first.stopped and "503" in first.stopped
        assert receiver.ids() == ids[:8], "nothing after the failed batch was sent"
        assert first.totals == {"pending": 8, "delivered": 8, "failed": 0}
        [second] = deliver(settings, check_sinks(settings, env={}))
        assert second.delivered == 8 and receiver.ids() == ids
    finally:
        receiver.down()


@pytest.mark.integration  # a real server on 127.0.0.1
def test_a_sink_refusing_every_request_stops_instead_of_dead_lettering_everything(tmp_path: Path) -> None:
    receiver = WebhookReceiver(behaviour=Behaviour(status_for_all=401))
    try:
        settings = _settings(tmp_path, receiver.url)
        _enqueue(settings, {DAY: 5})
        [report] = deliver(settings, check_sinks(settings, env={}))
        assert report.dead_lettered == 0 and report.totals["pending"] == 5 and "401" in (report.stopped or "")
    finally:
        receiver.down()


@pytest.mark.integration  # a real server on 127.0.0.1
def test_retry_after_is_obeyed_up_to_backoff_max(tmp_path: Path) -> None:
    receiver = WebhookReceiver(behaviour=Behaviour(status_for_all=429, retry_after="120"))
    try:
        settings = _settings(tmp_path, receiver.url, max_attempts=3, backoff_max_sec=0.5)
        _enqueue(settings, {DAY: 2})
        slept: list[float] = []
        [sink] = check_sinks(settings, env={})
        with Ledger.open(settings.paths.data_dir) as ledger:
            report = _SinkRun(ledger, sink, deadline=None, sleep=slept.append).run()
        assert slept == [0.5, 0.5] and report.requests == 3 and "429" in (report.stopped or "")
    finally:
        receiver.down()


@pytest.mark.integration  # a real server on 127.0.0.1
def test_the_budget_leaves_alerts_pending(tmp_path: Path) -> None:
    receiver = WebhookReceiver(behaviour=Behaviour(status_for_all=503))
    try:
        settings = _settings(tmp_path, receiver.url, max_attempts=50, backoff_base_sec=0.2, backoff_max_sec=0.2)
        _enqueue(settings, {DAY: 3})
        [report] = deliver(settings, check_sinks(settings, env={}), budget_sec=0.5)
        assert report.totals["pending"] == 3 and "budget" in (report.stopped or "") and report.requests < 6
    finally:
        receiver.down()


@pytest.mark.integration  # a real server on 127.0.0.1
def test_a_receiver_trickling_its_answer_is_cut_at_timeout_sec(tmp_path: Path) -> None:
    """A receiver sending its answer a byte every 0.2 s never lets a read time out: the
    deliverer waited on it for 80 minutes per attempt (10 kB at a byte per 0.5 s), far past
    timeout_sec and the delivery budget, holding `score` hostage. The whole request now
    gets timeout_sec."""
    # a whole, valid 200 in the end (~15 s): without the cut it would be taken as the acknowledgement
    receiver = RawWebhook(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 40 + b"\r\nContent-Length: 0\r\n\r\n",
                          byte_pause=0.2)
    try:
        settings = _settings(tmp_path, receiver.url, timeout_sec=1, max_attempts=2)
        _enqueue(settings, {DAY: 3})
        started = time.monotonic()
        [report] = deliver(settings, check_sinks(settings, env={}), budget_sec=10)
        assert time.monotonic() - started < 6, "two attempts of at most timeout_sec each, plus backoff"
        assert report.totals["pending"] == 3 and report.delivered == 0
        # the receiver counts a request when its thread accepts it, which a loaded machine
        # may do after the client gave up on it: wait for the count, do not race it
        wait_until(lambda: receiver.requests == 2, 10, "both attempts reached the receiver")
        assert "within timeout_sec 1 s" in (report.stopped or "")
    finally:
        receiver.close()


@pytest.mark.integration  # a real server on 127.0.0.1
@pytest.mark.parametrize("answer", [
    b"\x00\x01garbage\x1b[2J\r\n\r\n",
    b"HTTP/1.1 500 Oops\x1b[31m\r\nContent-Length: 18\r\n\r\n\x00evil\x1b[2J\x07\x08end\x9b",
])
def test_what_a_receiver_answers_reaches_logs_and_ledger_without_control_characters(
        tmp_path: Path, answer: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """A hostile receiver's answer went verbatim into the log lines, the stop reason and
    the ledger's last_error: a NUL, a line break or an ANSI escape forged log lines or
    cleared the operator's terminal."""
    receiver = RawWebhook(answer)
    try:
        settings = _settings(tmp_path, receiver.url, max_attempts=2)
        _enqueue(settings, {DAY: 2})
        [report] = deliver(settings, check_sinks(settings, env={}))
        with Ledger.open(settings.paths.data_dir) as ledger:
            errors = [r.last_error or "" for r in ledger.rows()]
        texts = [report.stopped or "", *errors, *(r.getMessage() for r in caplog.records)]
        stopped = report.stopped or ""
        assert report.totals["pending"] == 2 and ("garbage" in stopped or "evil" in stopped), stopped
        assert any(stopped.split(" (")[0] in r.getMessage() for r in caplog.records), "the log line is checked too"
        assert all(c.isprintable() for text in texts for c in text), texts
    finally:
        receiver.close()


@pytest.mark.integration  # a real collector on 127.0.0.1
def test_a_syslog_collector_closing_without_reading_gets_nothing_marked_delivered(tmp_path: Path) -> None:
    """A collector that closes each connection without reading sends a FIN, then a reset
    for our bytes; when the FIN came first it was taken as "read it all, then closed" and
    the batch was marked delivered though nobody had it: lost. A race (up to 1 send in 200
    here, with the collector in its own process), so 10,000 sends of a one-alert batch:
    without the check 3 runs in 4 here caught a loss."""
    from alert_receivers import ClosingCollector

    collector = ClosingCollector()
    try:
        settings = load_settings(overrides={"paths": {"data_dir": tmp_path / "data"}, "alerting": {"sinks": [{
            "type": "syslog", "name": "hook", "host": "127.0.0.1", "port": collector.port, "batch_size": 1,
            "timeout_sec": 2, "max_attempts": 1, "payload": "json"}]}}, env={})
        [sink] = check_sinks(settings, env={})
        message = syslog_message(_record(alert_id="uba-0"), sink.config, hostname="h")
        with Ledger.open(settings.paths.data_dir) as ledger:
            ledger.enqueue(DAY, "r", {"hook": [Entry("uba-0", "event", "u", message)]})
        sender = sender_for(sink.config)
        outcomes = Counter(sender.send(["uba-0"], [message]).kind for _ in range(10_000))
        assert outcomes == {"retry": 10_000}, outcomes
        [report] = deliver(settings, [sink])
        assert report.delivered == 0 and report.totals["pending"] == 1 and report.stopped
    finally:
        collector.close()


# --- ledger and checks ---------------------------------------------------------------------


def test_enqueue_is_insert_or_ignore_and_keeps_history(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        assert ledger.enqueue(DAY, "r1", {"hook": [Entry("uba-a", "event", "u", "{}"),
                                                   Entry("uba-b", "event", "u", "{}")]}) == {"hook": 2}
        ledger.mark_delivered("hook", ["uba-a"])
        ledger.mark_failed("hook", ["uba-b"], "HTTP 400")
        again = ledger.enqueue(DAY, "r2", {"hook": [Entry("uba-a", "event", "u", '{"changed":1}'),
                                                    Entry("uba-c", "event", "u", "{}")]})
        assert again == {"hook": 1}
        rows = {r.alert_id: r for r in ledger.rows()}
        assert rows["uba-a"].status == "delivered" and rows["uba-a"].payload == "{}"
        assert rows["uba-b"].status == "failed" and rows["uba-c"].status == "pending"
        assert rows["uba-c"].seq > rows["uba-b"].seq
        assert ledger.was_enqueued("hook", DAY, "r1") and ledger.was_enqueued("hook", DAY, "r2")


def test_ledger_summaries_for_monitor_outbox_and_retry(tmp_path: Path) -> None:
    """What `monitor`, `alerts outbox`, `alerts list --failed` and `alerts retry-failed`
    read: nothing (and nothing created) without a ledger, then the per-sink state."""
    data = tmp_path / "data"
    assert sink_states(data) is None and outbox_rows(data, "failed", None, None, None) is None
    with pytest.raises(UserError, match="no delivery ledger under .*no dead letters"):
        retry_dead_letters(data, None, ())
    assert not data.exists()
    with Ledger.open(data) as ledger:
        ledger.enqueue(DAY, "r1", {"hook": [Entry("uba-a", "event", "u", "{}"), Entry("uba-b", "event", "u", "{}")],
                                   "siem": [Entry("uba-a", "event", "u", "{}")]})
        ledger.mark_failed("hook", ["uba-b"], "HTTP 400")
        ledger.mark_delivered("siem", ["uba-a"])
    hook, siem = sink_states(data) or []
    assert (hook.sink, hook.pending, hook.failed, hook.delivered, hook.oldest_pending) == ("hook", 1, 1, 0, DAY.isoformat())
    assert hook.needs_attention and not siem.needs_attention and siem.oldest_pending is None
    assert [r.alert_id for r in outbox_rows(data, "failed", "hook", None, None) or []] == ["uba-b"]
    with pytest.raises(UserError, match="sink: no sink named 'nope' in the delivery ledger \\(known: hook, siem\\)"):
        retry_dead_letters(data, "nope", ())
    assert retry_dead_letters(data, "hook", ()) == 1
    assert (sink_states(data) or [])[0].pending == 2


def test_check_sinks_needs_the_secrets_in_the_environment(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "http://127.0.0.1:9/x", secret_envs=["A_SECRET", "B_SECRET"])
    with pytest.raises(UserError, match="B_SECRET is not set"):
        check_sinks(settings, env={"A_SECRET": "x"})
    [ready] = check_sinks(settings, env={"A_SECRET": "x", "B_SECRET": "y"})
    assert ready.secrets == (b"x", b"y") and isinstance(ready, ReadySink)
    with pytest.raises(UserError, match="ca_file"):
        check_sinks(_settings(tmp_path, "https://127.0.0.1:9/x", ca_file=str(tmp_path / "none.pem")), env={})


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://host/x", "http:// or https://"), ("http:///x", "with a host"), ("http://h:99999/", "valid URL"),
    ("http://user:pw@h/", "credentials"), ("http://h/ x", "without spaces"),
])
def test_malformed_urls_are_refused_at_load(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        _settings(tmp_path, url)


# --- TLS: HTTPS webhooks and RFC 5425 syslog, with a private CA file ------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made by openssl, as a private CA would)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (.ci/run installs it)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def _server_tls(certificate: tuple[Path, Path]) -> Any:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context


@pytest.mark.integration  # a real server on 127.0.0.1
def test_https_webhook_trusts_only_the_configured_ca(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    receiver = WebhookReceiver(tls=_server_tls(certificate))
    try:
        untrusted = _settings(tmp_path / "a", receiver.url)
        _enqueue(untrusted, {DAY: 3})
        [report] = deliver(untrusted, check_sinks(untrusted, env={}))
        assert report.totals["pending"] == 3 and "not trusted" in (report.stopped or "") and receiver.ids() == []
        trusted = _settings(tmp_path / "b", receiver.url, ca_file=str(certificate[0]))
        ids = _enqueue(trusted, {DAY: 3})
        [report] = deliver(trusted, check_sinks(trusted, env={}))
        assert report.delivered == 3 and receiver.ids() == ids
    finally:
        receiver.down()


@pytest.mark.integration  # a real server on 127.0.0.1
def test_syslog_over_tls_is_acknowledged_when_the_collector_closed(tmp_path: Path,
                                                                   certificate: tuple[Path, Path]) -> None:
    from alert_receivers import TlsSyslogCollector

    collector = TlsSyslogCollector(_server_tls(certificate))
    try:
        settings = load_settings(overrides={"paths": {"data_dir": tmp_path / "data"}, "alerting": {"sinks": [{
            "type": "syslog", "name": "hook", "host": "127.0.0.1", "port": collector.port, "tls": True,
            "ca_file": str(certificate[0]), "batch_size": 2, "timeout_sec": 5, "payload": "json"}]}}, env={})
        [sink] = check_sinks(settings, env={})
        messages = [syslog_message(_record(alert_id=f"uba-{i}"), sink.config, hostname="h") for i in range(5)]
        with Ledger.open(settings.paths.data_dir) as ledger:
            ledger.enqueue(DAY, "r", {"hook": [Entry(f"uba-{i}", "event", "u", m) for i, m in enumerate(messages)]})
        [report] = deliver(settings, [sink])
        assert report.delivered == 5 and report.requests == 3 and collector.messages == messages
    finally:
        collector.close()


def _documented_verify() -> Any:
    """The receiver-side check docs/alerting.md gives operators, executed as written."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "alerting.md").read_text(encoding="utf-8")
    [code] = [block for block in re.findall(r"```python\n(.*?)```", doc, re.S) if "def verify(" in block]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/alerting.md", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace["verify"]


@pytest.mark.parametrize("header", ["t=1,v1", "garbage", "t=\u00b2,v1=ab", "t=1,v1=\u00e9\u00e9", "", ",,,", "v1=ab"])
def test_the_documented_signature_check_accepts_ours_and_refuses_malformed_headers_without_raising(
        header: str) -> None:
    """The snippet raised on a header element without '=' (ValueError), a superscript digit
    as the stamp (int('²')) and a non-ASCII mac (compare_digest): a receiver copying it
    answered 500 instead of 401 (found by an attack)."""
    verify = _documented_verify()
    body, secret = b'{"alerts": []}', b"s3cret"
    assert verify(sign(body, [secret]), body, [secret]) is True
    assert verify(sign(body, [b"other"]), body, [secret]) is False
    assert verify(header.replace("t=1", f"t={int(time.time())}"), body, [secret]) is False
