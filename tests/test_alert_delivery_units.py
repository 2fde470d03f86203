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
from alert_receivers import Behaviour, RawWebhook, WebhookReceiver, self_signed_certificate
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
from uba.alerting.transport import (
    Outcome,
    answer_reports_error,
    classify_status,
    retry_after_seconds,
    sender_for,
)
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
    assert [retry_after_seconds(v) for v in ("\u00b2", "\u00b9\u00b2", "-5", "1.5", "0x10")] == [None] * 5
    assert classify_status(413, "Too Large", "3") == Outcome("retry", "HTTP 413 Too Large", 3.0), "temporary"
    assert classify_status(413, "Too Large", None).kind == "reject"


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
@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\nConnection: close\r\n", b"HTTP/1.0 200 OK\r\n",
                                  b"HTTP/1.1 200 OK\r\n"], ids=["1.1 close", "1.0", "1.1 keep-alive"])
def test_a_receiver_trickling_its_body_after_a_prompt_head_is_cut_at_timeout_sec(tmp_path: Path, head: bytes) -> None:
    """The deadline shut the connection's socket down, but http.client lets go of it once
    the head of an answer that closes (``Connection: close``, HTTP/1.0) is read: a body
    trickled a byte every 0.2 s was waited for whole (30 bytes: 6 s at timeout_sec 1, and
    without end for a longer body), past timeout_sec and the delivery budget."""
    body = b"x" * 30
    answer = head + b"Content-Length: %d\r\n\r\n" % len(body)
    receiver = RawWebhook(answer + body, byte_pause=0.2, at_once=len(answer))
    try:
        settings = _settings(tmp_path, receiver.url, timeout_sec=1, max_attempts=1)
        _enqueue(settings, {DAY: 2})
        started = time.monotonic()
        [report] = deliver(settings, check_sinks(settings, env={}))
        assert time.monotonic() - started < 3, "one attempt of at most timeout_sec"
        assert report.delivered == 0 and "within timeout_sec 1 s" in (report.stopped or ""), report.line()
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


def _answer(status: str, body: bytes = b"", headers: bytes = b"") -> bytes:
    """A raw HTTP/1.1 answer with its Content-Length."""
    return b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n%s" % (status.encode(), headers, len(body), body)


def _bulk_answer(errors: bytes, items: int) -> bytes:
    """An Elasticsearch ``_bulk`` answer: ``took``, ``errors``, then one item per document
    (about 210 bytes each), so a few dozen alerts pass 4 KiB."""
    item = (b'{"index":{"_index":"uba-alerts","_id":"%06d","status":400,"error":{"type":'
            b'"mapper_parsing_exception","reason":"failed to parse field [risk] of type [long]"}}}')
    body = b",".join(item % i for i in range(items))
    return b'{"took":30,"errors":' + errors + b',"items":[' + body + b"]}"


NOT_ACKNOWLEDGED = {  # what a hostile webhook answers -> words of the ledger's last_error
    "redirect to another port": (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n",
                                 "HTTP 307"),
    "redirect to https": (b"HTTP/1.1 308 Permanent Redirect\r\nLocation: https://127.0.0.1:{port}/hook\r\n"
                          b"Content-Length: 0\r\n\r\n", "HTTP 308"),
    "chunked garbage after 200": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\ngarbage\r\n",
                                  "IncompleteRead"),
    "200 saying ok false": (_answer("200 OK", b'{"ok": false, "error": "invalid_token"}'), "reports an error"),
    "200 saying errors true": (_answer("200 OK", b'{"errors": true, "items": []}'), "reports an error"),
    "200 saying errors true in a 20 KiB bulk answer": (_answer("200 OK", _bulk_answer(b"true", 100)),
                                                       "reports an error"),
    "200 saying errors true in a 1 MiB bulk answer": (_answer("200 OK", _bulk_answer(b"true", 5000)),
                                                      "reports an error"),
    "413 with Retry-After": (b"HTTP/1.1 413 Payload Too Large\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
                             "HTTP 413"),
    "429 with a Latin-1 digit as Retry-After": (b"HTTP/1.1 429 Too Many\r\nRetry-After: \xb2\r\n"
                                                b"Content-Length: 0\r\n\r\n", "HTTP 429"),
    "429 with a negative Retry-After": (b"HTTP/1.1 429 Too Many\r\nRetry-After: -5\r\nContent-Length: 0\r\n\r\n",
                                        "HTTP 429"),
    "429 with a huge Retry-After": (b"HTTP/1.1 429 Too Many\r\nRetry-After: " + b"9" * 400 + b"\r\n"
                                    b"Content-Length: 0\r\n\r\n", "HTTP 429"),
    "503 with an HTTP-date Retry-After": (b"HTTP/1.1 503 Busy\r\nRetry-After: Fri, 31 Dec 9999 23:59:59 GMT\r\n"
                                          b"Content-Length: 0\r\n\r\n", "HTTP 503"),
    "503 with a Retry-After year past a C long": (b"HTTP/1.1 503 Busy\r\nRetry-After: Fri, 31 Dec "
                                                  b"99999999999999999999 23:59:59 GMT\r\nContent-Length: 0\r\n\r\n",
                                                  "HTTP 503"),
}


@pytest.mark.parametrize(("start", "reports"), [
    ('{"took": 30, "errors": true, "items": [{"index": {"status": 4', True),
    ('  {"status" : "failed", "items": [', True),
    ('{"ok": false, "respon', True),
    ('{"took": 30, "errors": false, "items": [{"index": {"error": "x"', False),  # cut inside items
    ('{"took": 30, "err', False),  # the key itself cut off
    ('{"took": 30, "errors"', False),
    ('[{"errors": true}, ', False),  # not an object
    ('{"took": 30 "errors": true', False),  # malformed before it
    ('not json at all', False),
])
def test_the_start_of_a_long_answer_is_read_up_to_its_first_cut_member(start: str, reports: bool) -> None:
    assert answer_reports_error(start, whole=False) is reports
    assert answer_reports_error(start) is False, "a cut body parsed whole is no JSON"


@pytest.mark.integration  # real servers on 127.0.0.1
@pytest.mark.parametrize("case", list(NOT_ACKNOWLEDGED))
def test_answers_that_are_no_acknowledgement_leave_the_batch_pending_with_bounded_visible_retries(
        tmp_path: Path, case: str) -> None:
    """What a SIEM's webhook (or the proxy before it) may answer without taking the batch.
    Redirects are never followed (the batch is not re-sent to another port or scheme).
    Found broken: ``Retry-After: \\xb2`` (Latin-1 for ``²``, which ``str.isdigit`` accepts and
    ``float`` refuses) crashed the delivery run with a traceback; a 200 whose JSON says
    ``"ok": false`` or ``"errors": true`` was marked delivered; a 413 with a ``Retry-After``
    (temporary, RFC 9110) was dead-lettered."""
    target = WebhookReceiver()
    template, words = NOT_ACKNOWLEDGED[case]
    receiver = RawWebhook(template.replace(b"{target}", target.url.encode()).replace(b"{port}", str(target.port).encode()))
    try:
        settings = _settings(tmp_path, receiver.url, max_attempts=3, backoff_max_sec=0.01)
        _enqueue(settings, {DAY: 3})
        [report] = deliver(settings, check_sinks(settings, env={}))
        assert report.delivered == 0 and report.dead_lettered == 0 and report.totals["pending"] == 3, report.line()
        assert report.requests <= 3 and receiver.requests == report.requests, "retries are bounded by max_attempts"
        with Ledger.open(settings.paths.data_dir) as ledger:
            rows = ledger.rows()
        assert {r.status for r in rows} == {"pending"} and all(words in (r.last_error or "") for r in rows), rows
        assert all(r.attempts == report.requests for r in rows), "every attempt is in the ledger"
        assert target.requests == 0, "a redirect is not followed"
    finally:
        receiver.close()
        target.down()


ACKNOWLEDGED = {  # a receiver that read the batch and answers 2xx in ways it may -> delivered, no traceback
    "100 Continue before the 200": b"HTTP/1.1 100 Continue\r\n\r\n" + _answer("200 OK"),
    "102 Processing before the 200": b"HTTP/1.1 102 Processing\r\n\r\n" + _answer("200 OK"),
    "103 Early Hints before the 200": (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                                       b"HTTP/1.1 103 Early Hints\r\n\r\n" + _answer("200 OK")),
    "200 whose body nests deeper than json recurses": _answer("200 OK", b"[" * 4000),
    "200 whose 1 MiB bulk answer says errors false": _answer("200 OK", _bulk_answer(b"false", 5000)),
    "200 whose 1 MiB answer opens deeper than json recurses": _answer("200 OK", b'{"a":' * 100_000),
    "200 with a Retry-After year past a C long": _answer("200 OK", headers=b"Retry-After: Fri, 31 Dec "
                                                         b"99999999999999999999 23:59:59 GMT\r\n"),
}


@pytest.mark.integration  # a real server on 127.0.0.1
@pytest.mark.parametrize("case", list(ACKNOWLEDGED))
def test_a_2xx_after_interim_answers_or_with_an_odd_body_or_header_is_delivered(tmp_path: Path, case: str) -> None:
    """RFC 9110 15.2: a client must parse any 1xx before the final answer. http.client skips
    only 100, so a receiver sending 102 Processing or 103 Early Hints first had its 1xx taken
    as the answer: the sink stopped ("refuses every request") and never delivered. A 200
    whose body nests JSON 4,000 deep (RecursionError) or whose Retry-After names a year past
    a C long (OverflowError) crashed the delivery run with a traceback."""
    receiver = RawWebhook(ACKNOWLEDGED[case])
    try:
        settings = _settings(tmp_path, receiver.url)
        _enqueue(settings, {DAY: 2})
        [report] = deliver(settings, check_sinks(settings, env={}))
        assert report.delivered == 2 and report.requests == 1 and report.stopped is None, report.line()
    finally:
        receiver.close()


@pytest.mark.integration  # a real server on 127.0.0.1
def test_a_413_without_retry_after_still_dead_letters_only_what_is_refused(tmp_path: Path) -> None:
    receiver = RawWebhook(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
    try:
        settings = _settings(tmp_path, receiver.url)
        _enqueue(settings, {DAY: 2})
        [report] = deliver(settings, check_sinks(settings, env={}))
        assert report.dead_lettered == 2 and report.totals["failed"] == 2 and report.requests == 3
    finally:
        receiver.close()


@pytest.mark.integration  # a real server on 127.0.0.1
def test_a_200_sent_before_the_receiver_read_the_request_is_no_acknowledgement(tmp_path: Path) -> None:
    """A receiver that answers 200 on the request line and closes never read the batch: its
    kernel resets the connection for the unread bytes. The sender read the 200 before the
    reset arrived in about 4 sends in 10 here and marked the batch delivered. 200 sends of
    a one-alert and of a 50-alert batch: none may be taken for an acknowledgement."""
    from alert_receivers import EarlyAnswerWebhook

    receiver = EarlyAnswerWebhook()
    try:
        sender = sender_for(WebhookSink(name="hook", url=receiver.url, format="jsonl", timeout_sec=2))
        for size in (1, 50):
            ids, payloads = [f"uba-{i}" for i in range(size)], ['{"pad": "' + "x" * 300 + '"}'] * size
            outcomes = Counter(sender.send(ids, payloads).kind for _ in range(200))
            assert outcomes == {"retry": 200}, (size, outcomes)
        settings = _settings(tmp_path, receiver.url, max_attempts=2)
        _enqueue(settings, {DAY: 3})
        [report] = deliver(settings, check_sinks(settings, env={}))
        assert report.delivered == 0 and report.totals["pending"] == 3 and report.stopped
    finally:
        receiver.close()


@pytest.mark.integration  # a real server on 127.0.0.1
def test_a_well_behaved_receiver_still_acknowledges_at_once(tmp_path: Path) -> None:
    """The acknowledgement waits for the receiver to close (``Connection: close``): one that
    reads the request, answers 2xx (with a body that is not an error) and closes counts."""
    for answer in (_answer("200 OK", b"ok"), _answer("202 Accepted", b'{"ok": true, "errors": [], "error": null}'),
                   b"HTTP/1.0 204 No Content\r\n\r\n"):
        receiver = RawWebhook(answer)
        try:
            settings = _settings(tmp_path / str(receiver.port), receiver.url)
            _enqueue(settings, {DAY: 2})
            started = time.monotonic()
            [report] = deliver(settings, check_sinks(settings, env={}))
            assert report.delivered == 2 and report.requests == 1, (answer, report.line())
            assert time.monotonic() - started < 1.5, "no wait for a close that came"
        finally:
            receiver.close()


WAIT_FOR_THE_CLIENT = ("uvicorn over TLS", "http.server answering keep-alive", "http.server answering keep-alive, TLS")


@pytest.mark.integration  # real servers on 127.0.0.1
@pytest.mark.parametrize("case", WAIT_FOR_THE_CLIENT)
def test_receivers_that_wait_for_the_client_to_close_acknowledge_at_once(
        tmp_path: Path, certificate: tuple[Path, Path], case: str) -> None:
    """Ordinary servers that close only after the client does: uvicorn (asyncio) over TLS
    sends its close_notify and waits for the client's before closing TCP; an http.server
    handler that sets ``Connection: keep-alive`` itself keeps the connection for the next
    request. The sender waited for their close until timeout_sec on every batch (10 s per
    batch at the default: 2 minutes for a 300-alert day). It half-closes once the 2xx is
    read, so they close at once; each batch arrives once and counts."""
    from alert_receivers import UvicornWebhook

    if case == "uvicorn over TLS":
        receiver: Any = UvicornWebhook((str(certificate[0]), str(certificate[1])))
        arrivals, stop = (lambda: receiver.arrivals), receiver.close
    else:
        receiver = WebhookReceiver(tls=_server_tls(certificate) if "TLS" in case else None, keep_alive=True)
        arrivals, stop = receiver.ids, receiver.down
    try:
        timeout = 6.0
        settings = _settings(tmp_path, receiver.url, ca_file=str(certificate[0]), batch_size=2, timeout_sec=timeout)
        ids = _enqueue(settings, {DAY: 6})
        started = time.monotonic()
        [report] = deliver(settings, check_sinks(settings, env={}))
        elapsed = time.monotonic() - started
        assert report.delivered == 6 and report.requests == 3, report.line()
        assert arrivals() == ids, "each alert once, in order"
        assert elapsed < timeout, f"3 batches took {elapsed:.1f} s: a wait for timeout_sec ({timeout:g} s)"
    finally:
        stop()


@pytest.mark.integration  # a real server on 127.0.0.1
def test_a_2xx_from_a_receiver_that_keeps_the_connection_open_counts_at_timeout_sec(tmp_path: Path) -> None:
    """A receiver ignoring ``Connection: close`` and our half-close (it reads no more) gave no
    sign of skipping the body: its 200 is taken once timeout_sec has passed, not retried for
    ever (the sink would never move)."""
    receiver = RawWebhook(_answer("200 OK"), hold_sec=10)
    try:
        settings = _settings(tmp_path, receiver.url, timeout_sec=1, max_attempts=3)
        _enqueue(settings, {DAY: 2})
        started = time.monotonic()
        [report] = deliver(settings, check_sinks(settings, env={}))
        assert report.delivered == 2 and report.requests == 1 and time.monotonic() - started < 5, report.line()
    finally:
        receiver.close()


@pytest.mark.integration  # a real server on 127.0.0.1
def test_neither_the_signing_secret_nor_the_urls_path_reaches_logs_or_the_ledger(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Servers answer a wrong route with ``Cannot POST <path>`` (Express) and the answer went
    into the log line, the stop reason and the ledger: a Slack webhook URL's path is its
    secret. The HMAC key never leaves the process either."""
    secret_path = "/services/T0/B0/PATHSECRET"
    answer = f"Cannot POST {secret_path}?token=QUERYSECRET".encode()
    receiver = RawWebhook(_answer("404 Not Found", answer))
    try:
        url = f"http://127.0.0.1:{receiver.port}{secret_path}?token=QUERYSECRET"
        settings = _settings(tmp_path, url, secret_envs=["UBA_TEST_HOOK_SECRET"], max_attempts=2)
        _enqueue(settings, {DAY: 2})
        caplog.set_level("DEBUG")
        [report] = deliver(settings, check_sinks(settings, env={"UBA_TEST_HOOK_SECRET": "HMACSECRET"}))
        with Ledger.open(settings.paths.data_dir) as ledger:
            errors = [r.last_error or "" for r in ledger.rows()]
        texts = [report.stopped or "", report.line(), *errors, *(r.getMessage() for r in caplog.records)]
        assert "404" in (report.stopped or "") and "Cannot POST /..." in errors[0], errors
        assert not [t for t in texts for needle in ("PATHSECRET", "QUERYSECRET", "HMACSECRET") if needle in t], texts
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
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


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
