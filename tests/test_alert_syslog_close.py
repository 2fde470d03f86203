"""Syslog delivery against collectors that close early, on real sockets on 127.0.0.1.

TCP syslog (RFC 6587, RFC 5425) has no acknowledgement: a batch counts as delivered when
the collector closes the connection in answer to our end of the batch (docs/alerting.md,
"Acknowledgement"). A collector that closed its sending side *before* that, at accept or
after reading part of the batch, says it will send nothing more, not that it read the
batch: its kernel keeps acknowledging the bytes it buffers whether or not it ever reads
them. Those batches were marked delivered and lost; now they are sent again.

A batch larger than every buffer between us (our send buffer's ceiling, ``tcp_wmem``, and
the collector's fixed receive buffer) cannot be all written before the collector reads,
so its close certainly comes before our end of the batch: the tests are not races."""

from __future__ import annotations

import math
import ssl
from datetime import UTC, date, datetime
from pathlib import Path
from typing import cast

import pytest
from alert_receivers import ScriptedSyslogCollector, Step, self_signed_certificate

from uba.alerting.delivery import SinkReport, check_sinks, deliver
from uba.alerting.ledger import Entry, Ledger, OutboxRow
from uba.alerting.payloads import syslog_message
from uba.alerting.records import AlertRecord
from uba.alerting.transport import CLOSED_EARLY
from uba.settings import SyslogSink, load_settings

DAY = date(2026, 3, 9)
ATTEMPTS = 2
MESSAGE_BYTES = 8192


def _larger_than_the_buffers() -> int:
    """How many 8 kB alerts exceed our send buffer's ceiling plus the collector's buffer, by 4 MB."""
    ceiling = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return math.ceil((ceiling + 4 * 2**20) / MESSAGE_BYTES)


def _record(i: int) -> AlertRecord:
    """An alert of about ``MESSAGE_BYTES`` as a syslog message (its reason is long)."""
    return cast(AlertRecord, {
        "alert_id": f"uba-{i:06d}", "alert_type": "event", "user_id": f"u{i}",
        "time": datetime(2026, 3, 9, 2, 30, tzinfo=UTC), "event_date": DAY, "event_id": f"e{i}",
        "score": 0.7, "threshold": 0.6, "severity": "high", "reasons": ["x" * MESSAGE_BYTES],
        "reason_kinds": ["hour"], "model_version": "v1", "run_id": "r1",
        "run_ref": "runs/event_date=2026-03-09/manifest.json#run=r1"})


def _deliver(tmp_path: Path, collector: ScriptedSyslogCollector, count: int,
             **tls: object) -> tuple[SinkReport, list[str], list[OutboxRow]]:
    """``count`` alerts in one batch through the outbox to ``collector`` (``ATTEMPTS`` tries):
    the report, the alert ids in order and the ledger's rows afterwards."""
    settings = load_settings(overrides={"paths": {"data_dir": tmp_path / "data"}, "alerting": {"sinks": [{
        "type": "syslog", "name": "siem", "host": "127.0.0.1", "port": collector.port, "batch_size": count,
        "timeout_sec": 20, "max_attempts": ATTEMPTS, "backoff_base_sec": 0.01, "backoff_max_sec": 0.01,
        "payload": "json", **tls}]}}, env={})
    [sink] = check_sinks(settings, env={})
    assert isinstance(sink.config, SyslogSink)
    records = [_record(i) for i in range(count)]
    ids = [r["alert_id"] for r in records]
    with Ledger.open(settings.paths.data_dir) as ledger:
        ledger.enqueue(DAY, "r1", {"siem": [Entry(r["alert_id"], "event", r["user_id"],
                                                  syslog_message(r, sink.config, hostname="h")) for r in records]})
    [report] = deliver(settings, [sink])
    with Ledger.open(settings.paths.data_dir) as ledger:
        return report, ids, ledger.rows()


# ("read", -n): all the batch but its last n frames
@pytest.mark.parametrize(("script", "unread"), [
    pytest.param([("half-close", None), ("read", -1), ("hold", None)], 1,
                 id="half-closes at accept, reads all but the last frame, then stops reading"),
    pytest.param([("read", 5), ("half-close", None), ("read", -6), ("hold", None)], 1,
                 id="reads 5 frames, half-closes, reads all but the last, then stops reading"),
    pytest.param([("half-close", None), ("read", None), ("close", None)], 0,
                 id="half-closes at accept but reads the whole batch"),
])
def test_a_collector_that_closed_its_side_before_the_end_of_the_batch_does_not_acknowledge_it(
        tmp_path: Path, script: list[Step], unread: int) -> None:
    """Its kernel acknowledged every byte and its FIN came in, so the batch was marked
    delivered: the frames it never read were lost. Now the batch stays pending and is sent
    again on a new connection. A collector that half-closed and still read it all gets a
    duplicate: TCP cannot tell it from one that stopped reading (docs/alerting.md)."""
    count = _larger_than_the_buffers()
    collector = ScriptedSyslogCollector([(a, count + n if n is not None and n < 0 else n) for a, n in script])
    try:
        report, ids, rows = _deliver(tmp_path, collector, count)
        assert (report.delivered, report.totals["pending"], report.requests) == (0, count, ATTEMPTS), report.line()
        assert report.stopped and CLOSED_EARLY in report.stopped, report.stopped
        assert {(r.status, r.attempts, r.last_error) for r in rows} == {("pending", ATTEMPTS, CLOSED_EARLY)}
        assert collector.reads == [ids[:count - unread]] * ATTEMPTS, [len(r) for r in collector.reads]
    finally:
        collector.close()


@pytest.mark.parametrize("script", [
    pytest.param([("close", None)], id="closes right after accept"),
    pytest.param([("read", 5), ("close", None)], id="reads 5 frames then closes"),
])
def test_a_collector_that_closes_without_reading_it_all_does_not_acknowledge_it(
        tmp_path: Path, script: list[Step]) -> None:
    """A close with bytes unread (or bytes arriving after it) makes the collector's TCP
    reset them: never an acknowledgement, whatever the size of the batch."""
    for count in (20, _larger_than_the_buffers()):
        collector = ScriptedSyslogCollector(script)
        try:
            report, ids, rows = _deliver(tmp_path / str(count), collector, count)
            assert {r.status for r in rows} == {"pending"}
            assert (report.delivered, report.totals["pending"]) == (0, count), report.line()
            read = dict(script).get("read") or 0
            assert collector.reads == [ids[:read]] * len(collector.reads) and collector.reads, collector.reads
        finally:
            collector.close()


@pytest.mark.parametrize("script", [
    pytest.param([("read", None), ("close", None)], id="reads to the end then closes"),
    pytest.param([("read", None), ("half-close", None), ("hold", None)], id="reads to the end then half-closes"),
])
def test_a_collector_that_closes_after_reading_the_whole_batch_acknowledges_it_once(
        tmp_path: Path, script: list[Step]) -> None:
    """The close that answers our end of the batch is the acknowledgement, half-close or not."""
    count = _larger_than_the_buffers()
    collector = ScriptedSyslogCollector(script)
    try:
        report, ids, rows = _deliver(tmp_path, collector, count)
        assert (report.delivered, report.totals["pending"], report.requests) == (count, 0, 1), report.line()
        assert {r.status for r in rows} == {"delivered"}
        assert collector.reads == [ids]
    finally:
        collector.close()


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context with a self-signed certificate for 127.0.0.1 (made by openssl), and the
    certificate as the sink's ``ca_file``."""
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    return context, cert


def test_over_tls_a_collector_that_half_closed_before_the_end_of_the_batch_does_not_acknowledge_it(
        tmp_path: Path, server_tls: tuple[ssl.SSLContext, Path]) -> None:
    """The same over RFC 5425: the collector's FIN is seen under the TLS records it sent
    that we never read (TLS 1.3 session tickets)."""
    count = _larger_than_the_buffers()
    context, cert = server_tls
    collector = ScriptedSyslogCollector([("half-close", None), ("read", count - 1), ("hold", None)], tls=context)
    try:
        report, ids, rows = _deliver(tmp_path, collector, count, tls=True, ca_file=str(cert))
        assert (report.delivered, report.totals["pending"], report.requests) == (0, count, ATTEMPTS), report.line()
        assert {(r.status, r.last_error) for r in rows} == {("pending", CLOSED_EARLY)}
        assert collector.reads == [ids[:-1]] * ATTEMPTS, [len(r) for r in collector.reads]
    finally:
        collector.close()
