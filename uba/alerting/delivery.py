"""Alert delivery through the outbox: check the sinks, enqueue published days, deliver.

The flow (docs/alerting.md#delivery)::

    sinks = check_sinks(settings)              # at start-up, before any scoring: one-line errors
    register_sinks(settings, sinks)            # the ledger notes when it first saw each sink
    ... score publishes day D ...
    enqueue_day(settings, sinks, D)            # every alert of D, per sink, one transaction
    deliver(settings, sinks, budget_sec)       # per sink, in (day, seq) order

Guarantees: an alert is marked delivered only after its sink acknowledged it, so a crash
at any point leads to sending it again (at least once, always under its export id),
never to losing it. Per sink, alerts go in (day, seq) order and a sink that fails stops
for the run rather than skipping past its oldest pending alert; only alerts the sink
refuses for good (4xx other than 408/425/429 and the sink-wide 401/403/404/405/407) leave
the queue, as dead letters (status ``failed``), found by splitting the batch in halves.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from uba import io
from uba.alerting.ledger import (
    DELIVERED,
    FAILED,
    LEDGER_DIR,
    PENDING,
    Entry,
    Ledger,
    OutboxRow,
    ledger_path,
)
from uba.alerting.payloads import payload_for
from uba.alerting.records import RISK, AlertRecord, alert_records, day_records, run_info
from uba.alerting.transport import Outcome, safe_url, sender_for
from uba.errors import UserError
from uba.locks import try_exclusive_lock
from uba.logs import get_logger
from uba.manifest import (
    SUCCEEDED,
    DeliverySection,
    RunManifest,
    SinkDelivery,
    amend_published,
    read_manifest,
)
from uba.settings import AlertingSettings, Settings, SyslogSink, WebhookSink

log = get_logger("alerts.delivery")

KIND_READERS = {"alerts": "alerts", "user-days": "user-days", "risk": "risk"}


@dataclass(frozen=True)
class ReadySink:
    """A configured sink whose secrets were found: ready to render and send."""

    config: WebhookSink | SyslogSink
    secrets: tuple[bytes, ...] = ()

    @property
    def name(self) -> str:
        return self.config.name

    def describe(self) -> str:
        """Where it sends, safe for logs (no URL path: a Slack webhook's path is its secret)."""
        if isinstance(self.config, WebhookSink):
            return f"webhook {safe_url(self.config.url)} ({self.config.format})"
        scheme = "syslog+tls" if self.config.tls else "syslog"
        return f"{scheme}://{self.config.host}:{self.config.port} ({self.config.payload})"


# --- start-up check -----------------------------------------------------------------------


def check_sinks(settings: Settings, env: Mapping[str, str] | None = None) -> list[ReadySink]:
    """The configured sinks, or a one-line UserError for what settings validation cannot
    see: a secret environment variable that is not set (or empty), a ``ca_file`` that is
    not a readable file. (Malformed URLs, unknown sink types and duplicate names are
    refused when the settings load.) An unreachable receiver is not checked here: its
    alerts stay pending, it is not a configuration error."""
    env = os.environ if env is None else env
    ready = []
    for index, sink in enumerate(settings.alerting.sinks):
        where = f"alerting sink {sink.name!r} (alerting.sinks.{index})"
        secrets: list[bytes] = []
        for name in getattr(sink, "secret_envs", ()):
            value = env.get(name, "")
            if not value:
                raise UserError(f"{where}: the secret environment variable {name} is not set or empty")
            secrets.append(value.encode("utf-8"))
        if sink.ca_file is not None and not os.access(sink.ca_file, os.R_OK):
            raise UserError(f"{where}: ca_file {sink.ca_file} is not a readable file")
        if isinstance(sink, WebhookSink) and not secrets:
            log.warning("%s sends unsigned requests (no secret_envs): receivers cannot check them", where)
        ready.append(ReadySink(sink, tuple(secrets)))
    return ready


def select_sinks(sinks: Sequence[ReadySink], names: Iterable[str]) -> list[ReadySink]:
    """The sinks named (all when none are), or a one-line error naming the unknown one."""
    wanted = list(names)
    known = {s.name: s for s in sinks}
    for name in wanted:
        if name not in known:
            listed = ", ".join(known) or "none configured"
            raise UserError(f"no alerting sink named {name!r} (configured: {listed})")
    return [known[n] for n in wanted] if wanted else list(sinks)


def open_ledger(settings: Settings) -> Ledger:
    """The ledger of the settings' data directory (one-line error when it cannot be opened).
    A data directory that does not exist is refused rather than created: it is a mistyped
    ``--data-dir``, and a ledger there would be one nobody reads."""
    data_dir = Path(settings.paths.data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory {data_dir} does not exist (check --data-dir / UBA_DATA_DIR); "
                        "the alert delivery ledger lives in it")
    return Ledger.open(data_dir)


def register_sinks(settings: Settings, sinks: Sequence[ReadySink]) -> None:
    """Open the ledger and note the sinks, before scoring: a ledger that cannot be written
    fails the command at once, and a day published from now on is caught up if its own
    enqueue is interrupted."""
    if not sinks:
        return
    with open_ledger(settings) as ledger:
        ledger.register_sinks(s.name for s in sinks)


def prepare_sinks(settings: Settings) -> list[ReadySink]:
    """The configured sinks, checked and registered before a score run: a misconfigured
    sink or an unwritable ledger fails the command before any scoring."""
    sinks = check_sinks(settings)
    register_sinks(settings, sinks)
    return sinks


# --- enqueue ------------------------------------------------------------------------------


# Any: the rows as Polars ``DataFrame.to_dicts`` gives them
def day_alert_records(output_dir: Path, day: date, alerting: AlertingSettings) -> list[AlertRecord]:
    """The records of ``day`` that ``alerting.what`` selects, in export order (risk only
    when the day has entity risk)."""
    records: list[AlertRecord] = []
    for kind in alerting.what:
        if kind == "risk" and not io.partition_files(output_dir, RISK, day):
            continue
        records += alert_records(day_records(output_dir, day, KIND_READERS[kind], alerting.risk_min_level))
    return records


def enqueue_day(settings: Settings, sinks: Sequence[ReadySink], day: date,
                ledger: Ledger | None = None) -> dict[str, int]:
    """Record every alert of the published ``day`` for each sink (one transaction);
    returns how many were new per sink. Already-known alerts keep their state."""
    if not sinks:
        return {}
    output_dir = Path(settings.paths.output_dir)
    run = run_info(output_dir, day)
    records = day_alert_records(output_dir, day, settings.alerting)
    entries = {s.name: [Entry(r["alert_id"], r["alert_type"], r["user_id"], payload_for(r, s.config))
                        for r in records] for s in sinks}
    own = ledger is None
    ledger = ledger or open_ledger(settings)
    try:
        added = ledger.enqueue(day, run.run_id, entries)
    except sqlite3.Error as exc:
        raise UserError(f"{day} is published but its alerts could not be recorded in the delivery ledger "
                        f"{ledger.path}: {exc}; `uba-batch alerts deliver` enqueues them once it is writable") from exc
    finally:
        if own:
            ledger.close()
    log.info("enqueued %s: %s", day, ", ".join(f"{n} new for {s}" for s, n in added.items()))
    return added


def _finished_at(manifest: RunManifest) -> float | None:
    text = manifest.get("finished_at")
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def catch_up(settings: Settings, sinks: Sequence[ReadySink], forced_days: Sequence[date] = ()) -> dict[date, dict[str, int]]:
    """Enqueue published runs that were never enqueued for a sink: runs whose enqueue was
    interrupted (a kill between publish and enqueue), or published since the sink was
    first seen. A sink added later does not get the history before it unless asked:
    ``forced_days`` are enqueued for every sink whatever their age."""
    output_dir = Path(settings.paths.output_dir)
    forced = set(forced_days)
    for day in forced:
        if read_manifest(output_dir, day) is None:
            raise UserError(f"{day} is not scored in {output_dir}; run `uba-batch score --date {day}` first")
    done: dict[date, dict[str, int]] = {}
    with open_ledger(settings) as ledger:
        ledger.register_sinks(s.name for s in sinks)
        since = {s.name: ledger.registered_at(s.name) or 0.0 for s in sinks}
        for day in io.run_manifest_dates(output_dir):
            try:
                manifest = read_manifest(output_dir, day)
            except UserError as exc:  # one unreadable day does not hold back the others
                log.warning("catch-up skips %s: %s", day, exc)
                continue
            if not manifest or manifest.get("status") != SUCCEEDED:
                continue
            finished = _finished_at(manifest) or 0.0
            todo = [s for s in sinks if not ledger.was_enqueued(s.name, day, str(manifest.get("run_id")))
                    and (day in forced or finished >= since[s.name])]
            if todo:
                done[day] = enqueue_day(settings, todo, day, ledger=ledger)
    return done


# --- deliver ------------------------------------------------------------------------------


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): exponential with equal
    jitter, between half and all of ``min(cap, base * 2**(attempt-1))``, so retries of many
    senders spread out but never wait less than half the step. A ``Retry-After`` from the
    receiver is obeyed, up to ``cap``."""
    if retry_after is not None:
        return min(cap, max(0.0, retry_after))
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


@dataclass
class SinkReport:
    """What one delivery run did for one sink."""

    sink: str
    delivered: int = 0
    dead_lettered: int = 0
    requests: int = 0
    stopped: str | None = None  # why alerts were left pending, when they were
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys((PENDING, DELIVERED, FAILED), 0))

    def line(self) -> str:
        text = (f"{self.sink}: {self.delivered} delivered, {self.dead_lettered} dead-lettered in {self.requests} "
                f"request(s); now {self.totals[PENDING]} pending, {self.totals[FAILED]} failed")
        return text + (f" (stopped: {self.stopped})" if self.stopped else "")


@dataclass
class _SinkRun:
    """Delivery to one sink in one run: batches in order, retries, bisection of refusals."""

    ledger: Ledger
    sink: ReadySink
    deadline: float | None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.report = SinkReport(self.sink.name)
        self.sender = sender_for(self.sink.config, self.sink.secrets)

    def run(self) -> SinkReport:
        config = self.sink.config
        while True:
            if self.deadline is not None and self.clock() >= self.deadline:
                self.report.stopped = "delivery budget spent"
                break
            rows = self.ledger.next_pending(config.name, config.batch_size)
            if not rows or not self._deliver(rows):
                break
        return self.report

    def _deliver(self, rows: list[OutboxRow]) -> bool:
        """Send ``rows`` in order; a refused span is halved until the refused alerts are
        alone (dead letters). False when the sink must stop for this run."""
        stack = [rows]
        while stack:
            span = stack.pop()
            ids = [r.alert_id for r in span]
            outcome = self._send(span)
            if outcome.kind == "ack":
                self.ledger.mark_delivered(self.sink.name, ids)
                self.report.delivered += len(span)
            elif outcome.kind == "reject" and len(span) > 1:
                middle = len(span) // 2
                stack += [span[middle:], span[:middle]]  # the first half goes first
            elif outcome.kind == "reject":
                self.ledger.mark_failed(self.sink.name, ids, outcome.detail)
                self.report.dead_lettered += 1
                log.warning("%s refused alert %s of %s for good (%s): dead-lettered", self.sink.name, ids[0],
                            span[0].day, outcome.detail)
            else:
                self.report.stopped = outcome.detail
                log.warning("%s: delivery stopped for this run, %s left pending from %s: %s", self.sink.name,
                            "alerts", span[0].day, outcome.detail)
                return False
        return True

    def _send(self, span: list[OutboxRow]) -> Outcome:
        """One span, retried with backoff; ``stop`` once attempts or the budget run out."""
        config = self.sink.config
        ids, payloads = [r.alert_id for r in span], [r.payload for r in span]
        for attempt in range(1, config.max_attempts + 1):
            outcome = self.sender.send(ids, payloads)
            self.report.requests += 1
            if outcome.kind in ("ack", "reject"):
                return outcome
            self.ledger.note_attempt(self.sink.name, ids, outcome.detail)
            if outcome.kind == "stop":
                return outcome
            if attempt == config.max_attempts:
                return Outcome("stop", f"{outcome.detail} ({attempt} attempts)")
            delay = backoff_delay(attempt, config.backoff_base_sec, config.backoff_max_sec,
                                  outcome.retry_after, self.rng)
            if self.deadline is not None and self.clock() + delay > self.deadline:
                return Outcome("stop", f"{outcome.detail}; the delivery budget ends before the next attempt")
            log.info("%s: %s; attempt %d of %d in %.2f s", self.sink.name, outcome.detail, attempt + 1,
                     config.max_attempts, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")


def _sink_lock(data_dir: Path, name: str) -> int | None:
    """An exclusive lock on delivering to ``name`` (two deliverers would send the same alerts
    out of order); None when another process holds it."""
    return try_exclusive_lock(Path(data_dir) / LEDGER_DIR / f"deliver-{name}.lock")


def _deliver_one(settings: Settings, sink: ReadySink, deadline: float | None) -> SinkReport:
    data_dir = Path(settings.paths.data_dir)
    with Ledger(ledger_path(data_dir)) as ledger:  # one connection per thread
        fd = _sink_lock(data_dir, sink.name)
        if fd is None:
            report = SinkReport(sink.name, stopped="another process is delivering to this sink")
        else:
            try:
                report = _SinkRun(ledger, sink, deadline).run()
            finally:
                os.close(fd)
        report.totals = ledger.counts().get(sink.name, report.totals)
    return report


def deliver(settings: Settings, sinks: Sequence[ReadySink], budget_sec: float | None = None) -> list[SinkReport]:
    """Deliver every pending alert of each sink, sinks side by side (one slow receiver does
    not hold up another), each in its own order; stop at ``budget_sec`` (None: no limit)
    with the rest pending."""
    if not sinks:
        return []
    open_ledger(settings).close()  # created (and any error raised) before the threads start
    deadline = None if budget_sec is None else time.monotonic() + budget_sec
    if len(sinks) == 1:
        return [_deliver_one(settings, sinks[0], deadline)]
    with ThreadPoolExecutor(max_workers=len(sinks), thread_name_prefix="uba-deliver") as pool:
        return list(pool.map(lambda s: _deliver_one(settings, s, deadline), sinks))


# --- after a score run --------------------------------------------------------------------


def manifest_section(reports: Sequence[SinkReport], added: Mapping[str, int],
                     day_counts: Mapping[str, Mapping[str, int]]) -> DeliverySection:
    """The run manifest's ``delivery`` section: per sink, what this run enqueued, the day's
    alerts by status, and what the delivery did."""
    by_name = {r.sink: r for r in reports}
    sinks: dict[str, SinkDelivery] = {}
    for name in added:
        report = by_name.get(name)
        sinks[name] = {
            "enqueued": added[name],
            "day": dict(day_counts.get(name, dict.fromkeys((PENDING, DELIVERED, FAILED), 0))),
            "delivered_now": report.delivered if report else 0,
            "dead_lettered_now": report.dead_lettered if report else 0,
            "pending_total": report.totals[PENDING] if report else None,
            "failed_total": report.totals[FAILED] if report else None,
            "stopped": report.stopped if report else "not delivered by this run (deliver_after_score: false)",
        }
    return {"sinks": sinks, "updated_at": datetime.now(UTC).isoformat(timespec="milliseconds")}


def day_counts(settings: Settings, day: date) -> dict[str, dict[str, int]]:
    with open_ledger(settings) as ledger:
        return ledger.counts(day)


def deliver_published(settings: Settings, sinks: Sequence[ReadySink],
                      published: Mapping[tuple[date, str], Mapping[str, int]]) -> list[str]:
    """After ``score`` / ``backfill`` enqueued their days: deliver within the budget if
    ``deliver_after_score``, then write each day's ``delivery`` section into its manifest.
    ``published`` maps (day, run id) to what its enqueue added per sink. Returns lines
    for the operator; pending alerts are not an error (the command still exits 0)."""
    alerting = settings.alerting
    reports = deliver(settings, sinks, alerting.deliver_budget_sec) if alerting.deliver_after_score else []
    output_dir = Path(settings.paths.output_dir)
    for (day, run_id), added in published.items():
        section = manifest_section(reports, added, day_counts(settings, day))
        if not amend_published(output_dir, day, run_id, section):
            log.warning("the delivery counts of %s were not written to its manifest (another run of the day "
                        "holds it or replaced it)", day)
    if not reports:
        return [f"alerts enqueued for {', '.join(s.name for s in sinks)}; not delivered now "
                "(alerting.deliver_after_score: false): run `uba-batch alerts deliver`"]
    lines = [f"delivery {r.line()}" for r in reports]
    if any(r.totals[PENDING] for r in reports):
        lines.append("alerts left pending are sent by the next score run or `uba-batch alerts deliver`")
    return lines


def deliver_scored_day(settings: Settings, sinks: Sequence[ReadySink], day: date, run_id: str) -> list[str]:
    """After ``score`` published ``day``: the outbox first (durable), then catch-up of days
    whose own enqueue was interrupted, then delivery. Returns the operator's lines; pending
    alerts do not fail the run."""
    if not sinks:
        return []
    added = enqueue_day(settings, sinks, day)
    catch_up(settings, sinks)
    return deliver_published(settings, sinks, {(day, run_id): added})


@dataclass(frozen=True)
class DeliveryRun:
    """What ``alerts deliver`` did: days enqueued by catch-up, then one report per sink."""

    enqueued: dict[date, dict[str, int]]
    reports: list[SinkReport]

    @property
    def left_pending(self) -> bool:
        """A sink did not take everything (receiver down or slow): run again later."""
        return any(r.totals[PENDING] for r in self.reports)


def deliver_pending(settings: Settings, sink_names: Iterable[str], forced_days: Sequence[date] = (),
                    budget_sec: float | None = None) -> DeliveryRun | None:
    """``alerts deliver``: enqueue published days never enqueued (and ``forced_days``), then
    send every pending alert of the selected sinks (all when ``sink_names`` is empty).
    None when no sink is configured."""
    sinks = select_sinks(check_sinks(settings), sink_names)
    if not sinks:
        return None
    enqueued = catch_up(settings, sinks, forced_days)
    return DeliveryRun(enqueued, deliver(settings, sinks, budget_sec))
