"""The run record of one scored date: what went in, what came out, how it ran.

``runs/event_date=D/manifest.json`` describes the output currently published for D. It
is written into the run's version folder with the outputs (``<out>/.days/event_date=D/
<run id>/manifest.json``) and becomes visible with them in the one rename that publishes
the day (``uba.io.commit_day_version``), so the manifest a reader sees always describes
the files it sees. A failed run never touches it: its record goes to
``runs/event_date=D/failed-<UTC timestamp>.json`` and the previous good output and
manifest stay as they were.

The record is typed here, section by section (``RunManifest``; ``FailureRecord``), as it
is stored: the scoring driver writes it, ``read_manifest`` reads it back, and the JSON is
exactly what the driver's dicts hold.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Final, Literal, NotRequired, TypedDict, cast

from uba import io
from uba.errors import UserError
from uba.locks import RunLockedError, date_lock
from uba.schema import JsonValue

MANIFEST_FORMAT = 1
RunStatus = Literal["running", "succeeded", "failed"]
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
RUNNING: Final = "running"


# --- the record: one TypedDict per section, as stored (keys older manifests may lack are
# NotRequired; readers of those keys use ``.get``) ------------------------------------


class RunIdentity(TypedDict):
    """Which run this is; the part every record of a run has, a failed one included."""

    format: int
    event_date: str
    run_id: str
    started_at: str
    host: str
    pid: int
    uba_version: str


class BaselineProtection(TypedDict):
    """How many user-days of the lookback the baselines left out (``uba.features.protection``)."""

    enabled: bool
    min_active_days: int
    max_days: int
    unlearned_user_days: int
    unlearned_users: int


class DirectoryCoverage(TypedDict):
    """How much of a run's population the stored user directory describes."""

    users: int  # users in the directory
    matched_users: int  # of the run's users, those it lists
    run_users: int  # the run's users (those with a baseline)
    sha256: str  # of the directory file the run read (uba.directory.DirectorySnapshot)


class RunInputs(TypedDict):
    events: str
    baselines_as_of: str
    baseline_users: int
    lookback_days: int
    aggregates_computed: list[str]
    unverified_partitions: NotRequired[list[str]]
    baseline_protection: NotRequired[BaselineProtection]
    directory: NotRequired[DirectoryCoverage]  # only with a user directory stored
    events_fingerprint: NotRequired[str]  # io.parts_fingerprint of the events parts the run read
    # per day of the baselines' lookback, io.partition_fingerprint of its events ("" for none)
    lookback_events: NotRequired[dict[str, str]]


class ModelWindow(TypedDict):
    """The days a bundle was fitted on (ISO dates, inclusive)."""

    start: str
    end: str


class ModelFit(TypedDict):
    """How the bundle fits the scored day (``uba.scoring.model_fit``): its training window,
    whether the day lies inside it (in-sample: the forest saw these events, so they score
    lower and alert less than unseen days), and the ``features`` settings changed since
    training (setting -> [at training, now])."""

    training_window: NotRequired[ModelWindow]
    in_training_window: NotRequired[bool]
    feature_settings_changed: NotRequired[dict[str, list[JsonValue]]]


class RunModel(ModelFit):
    version: str
    path: str
    feature_set_version: str
    features: list[str]
    threshold: float
    threshold_percentile: float


class RunCounts(TypedDict):
    input_rows: int
    scored_rows: int
    flagged_rows: int
    quarantined_rows: int
    known_user_rows: int
    unknown_user_rows: int


class RowConservation(TypedDict):
    input_rows: int
    scored_rows: int
    quarantined_rows: int
    received_rows: int
    ok: bool


class ShardRecord(TypedDict):
    """One shard's line (``uba.scoring.shard.ShardResult.record``)."""

    index: int
    rows: int
    flagged_rows: int
    node_id: str
    pid: int
    fetched_inputs: bool
    seconds: dict[str, float]


class RunPlacement(TypedDict):
    """Where the shards ran; the Ray keys come from ``RayRuntime.describe``."""

    shards: int
    max_retries: int
    chunk_rows: int
    mode: str
    address: str | None
    workers: int
    reason: str
    started_by_job: NotRequired[bool]
    cluster_cpus: NotRequired[int]
    nodes: NotRequired[int]


class RunExecution(RunPlacement):
    shard_records: NotRequired[list[ShardRecord]]
    chunks: int


class PartRecord(TypedDict):
    """A written part: its rows and the sha256 of its bytes (``uba.scoring.shard``)."""

    rows: int
    sha256: str


class DatasetFiles(TypedDict):
    path: str
    files: dict[str, PartRecord]


class DatasetPath(TypedDict):
    path: str


class RunOutputs(TypedDict):
    scores: DatasetFiles
    flagged: DatasetFiles
    risk: NotRequired[DatasetPath]
    version: NotRequired[str]  # the run's version folder, relative to the output directory


class AlertCheck(TypedDict):
    """Alert volume against what the drift reference promises (``uba.monitoring.drift``)."""

    alerts_at_global_threshold: int
    alert_rate: float
    expected_alert_rate: float
    alerted_users: NotRequired[int]
    expected_alerted_users: NotRequired[float]
    alert_rate_ratio: float | None


class DriftLimits(TypedDict):
    psi_warn: float
    psi_drift: float
    min_drifted_features: int
    alert_rate_band: list[float]


class ChanceSample(TypedDict):
    """The sample sizes the chance PSI was computed for."""

    users: int
    reference_user_days: int
    confidence: float


class DriftJudgement(TypedDict):
    """What the verdict compared with its limits: the excess PSI keys are present only
    when the day was judged by its excess over chance."""

    judged_by: NotRequired[str]
    limits: DriftLimits
    feature_psi_excess: NotRequired[dict[str, float]]
    max_feature_psi_excess: NotRequired[float]
    score_psi_excess: NotRequired[float | None]
    chance: NotRequired[ChanceSample]


class DriftReport(AlertCheck, DriftJudgement):
    """A day's drift check (``uba.monitoring.drift.drift_report_from_counts``)."""

    status: str
    retrain_advised: bool
    why: list[str]
    warnings: list[str]
    rows: int
    feature_psi: dict[str, float]
    ignored_features: list[str]
    unused_features: NotRequired[list[str]]
    max_feature_psi: float
    max_feature: str | None
    score_psi: float | None


class DriftSection(DriftReport):
    reference: NotRequired[str]  # which training reference the day was compared with


class AlertSpread(TypedDict):
    """How alerts spread over users (``uba.monitoring.evaluation.alert_concentration``)."""

    users: int
    users_with_alerts: int
    top_1pct_users: int
    top_1pct_share_of_alerts: float
    max_alerts_one_user: int


class Concentration(AlertSpread):
    """An :class:`AlertSpread` with its alert count, as a run's manifest and ``evaluate`` store it
    (``uba.alerting.thresholds.concentration_from_counts``)."""

    alerts: int


class AlertConcentration(TypedDict):
    global_threshold: Concentration
    per_user_thresholds: Concentration | None


class AlertsSection(TypedDict):
    per_user_thresholds: bool
    flagged_rows: int
    flagged_rows_global_threshold: int
    suppressed_rows: int
    alert_rows: int
    active_suppression_rules: int
    concentration: AlertConcentration


class UserDaySection(TypedDict):
    enabled: bool
    users_scored: int
    flagged_users: int


class OperationSections(TypedDict):
    """What the run's operations hooks add (``uba.scoring.hooks.RunOperations``)."""

    drift: DriftSection
    alerts: AlertsSection
    user_day: UserDaySection


class RiskPrevious(TypedDict):
    date: str
    run_id: str | None


class RiskCuts(TypedDict):
    medium: float
    high: float
    critical: float


class RiskSettingsChange(TypedDict):
    """Risk settings that differ from those of the day whose scores this run carried."""

    since: str  # that day
    changes: dict[str, list[JsonValue]]  # setting -> [that day's value, this run's]


class RiskSection(TypedDict):
    """Entity risk of the day (``uba.alerting.risk.RiskRun.manifest_section``)."""

    users: int
    levels: dict[str, int]
    previous: RiskPrevious | None
    benign_verdicts: int
    half_life_days: float
    cuts: RiskCuts
    settings: NotRequired[dict[str, JsonValue]]  # every risk setting the formula used
    settings_changed: NotRequired[RiskSettingsChange]


class StaleEntry(TypedDict):
    """One ``risk_stale`` mark: an input of the day's entity risk changed after it was computed."""

    changed_day: str
    reason: str
    marked_at: str


class SinkDelivery(TypedDict):
    enqueued: int
    day: dict[str, int]
    delivered_now: int
    dead_lettered_now: int
    pending_total: int | None
    failed_total: int | None
    stopped: str | None


class DeliverySection(TypedDict):
    """Per sink, what the run enqueued and delivered; amended after publishing."""

    sinks: dict[str, SinkDelivery]
    updated_at: str


class RunRecord(RunIdentity):
    """The sections a run builds before it publishes (``status`` still ``running``); the
    manifest is this plus what publishing adds."""

    status: RunStatus
    error: str | None
    inputs: RunInputs
    model: RunModel
    counts: RunCounts
    row_conservation: RowConservation
    execution: RunExecution
    outputs: RunOutputs
    drift: NotRequired[DriftSection]
    alerts: NotRequired[AlertsSection]
    user_day: NotRequired[UserDaySection]
    risk: NotRequired[RiskSection]
    risk_stale: NotRequired[list[StaleEntry]]  # only while the day's entity risk is stale
    delivery: NotRequired[DeliverySection]  # amended after publishing, when sinks are configured


class RunManifest(RunRecord):
    """``runs/event_date=D/manifest.json``: the published record of one scored date."""

    finished_at: str
    duration_sec: float
    timings_sec: dict[str, float]


class FailureRecord(RunIdentity):
    """``failed-<ts>.json``: which run failed, where and why. A run that failed after
    building its record also carries that record's sections (a ``RunRecord``), as far
    as it got; nothing reads them back."""

    status: RunStatus
    error: str | None
    failed_stage: str
    finished_at: str
    duration_sec: float
    timings_sec: dict[str, float]
    published: bool


def failure_path(output_dir: Path, day: date, at: float | None = None) -> Path:
    """A failed run's record; one file per failure, so none overwrites another or the manifest."""
    at = time.time() if at is None else at
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at)) + f"{int(at * 1e6) % 1_000_000:06d}Z"
    return io.partition_dir(Path(output_dir), io.RUNS, day) / f"failed-{stamp}.json"


def read_manifest(output_dir: Path, day: date) -> RunManifest | None:
    """The published manifest of ``day``, or None when that day was never scored.

    The one typed reader: ``io.read_run_manifest`` checks the day's layout and reads the
    JSON object (a UserError for a corrupt file or a foreign layout); the record is
    taken as written by the driver, without a check of every key, so a manifest written
    before a section existed still reads (its readers ``.get`` such sections); only the
    sections readers step into are checked to be objects (``_check_sections``).
    """
    data = io.read_run_manifest(Path(output_dir), day)
    if data is None:
        return None
    _check_sections(data, io.run_manifest_path(Path(output_dir), day))
    # a null section (hand-edited, or written so by an older version) is a missing one, as
    # the readers' ``.get(section, {})`` expect; the stored file is left as it is
    present = {key: value for key, value in data.items()
               if value is not None or key not in (*_OBJECT_SECTIONS, "risk_stale")}
    return cast("RunManifest", present)


# Sections readers step into (model.version, risk.cuts.high, ...): a hand-edited manifest
# where one is not an object gets a one-line error naming it instead of a traceback.
_OBJECT_SECTIONS = ("model", "counts", "alerts", "risk", "drift", "user_day", "delivery", "inputs", "outputs")


def _check_sections(data: dict[str, JsonValue], path: Path) -> None:
    for key in _OBJECT_SECTIONS:
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            raise UserError(f"run manifest {path}: {key!r} is {type(value).__name__}, not a JSON object")
    risk = data.get("risk")
    cuts = risk.get("cuts") if isinstance(risk, dict) else None
    if cuts and not (isinstance(cuts, dict) and all(  # an empty one is none, as before entity risk
            isinstance(cuts.get(level), int | float) for level in ("medium", "high", "critical"))):
        raise UserError(f"run manifest {path}: risk.cuts must give a number for medium, high and critical")
    stale = data.get("risk_stale")
    if stale is not None and not isinstance(stale, list):
        raise UserError(f"run manifest {path}: 'risk_stale' is {type(stale).__name__}, not a JSON list")
    for index, entry in enumerate(stale if isinstance(stale, list) else []):
        if not isinstance(entry, dict):
            raise UserError(f"run manifest {path}: 'risk_stale' entry {index} is {type(entry).__name__}, "
                            "not a JSON object")


def verify_published(output_dir: Path, dataset: str, day: date, remedy: str) -> None:
    """Check the published ``dataset`` parts of ``day`` against the sha256 its manifest
    lists (``outputs.<dataset>.files``): a CorruptPartError naming the part and ``remedy``.

    For what is scanned by Polars rather than decoded whole (``scores``, too big for
    ``io.read_parquet_file``): one flipped byte in a page header makes the scan abort the
    process, past any ``except``. Parts without a manifest (deleted, or a link to nothing)
    cannot be checked and are refused too. A rerun that publishes the day between the
    manifest read and the hashing makes them disagree: the check is then made once more.
    """
    folder = io.partition_dir(Path(output_dir), dataset, day)
    for attempt in range(2):
        manifest = read_manifest(output_dir, day)
        if manifest is None:
            if io.partition_files(Path(output_dir), dataset, day):
                raise io.CorruptPartError(f"{dataset} partition {folder} has parts but no run manifest "
                                          f"{io.run_manifest_path(Path(output_dir), day)}: they cannot be verified; "
                                          f"{remedy}")
            return  # a day never scored: nothing to scan
        listing = f"the run manifest {io.run_manifest_path(Path(output_dir), day)}"
        problem = io.listed_parts_problem(folder, _listed_sha256(manifest, dataset, listing), listing)
        if problem is None:
            return
        if attempt == 0 and read_manifest(output_dir, day) != manifest:
            continue
        raise io.CorruptPartError(f"{problem}; {remedy}")


def _listed_sha256(manifest: RunManifest, dataset: str, listing: str) -> dict[str, str]:
    """Part name -> sha256 from ``outputs.<dataset>.files``; a listing that is not one (a
    hand edit: the driver always writes it) is a UserError naming the field."""
    outputs = cast("dict[str, JsonValue]", manifest.get("outputs", {}))
    section = outputs.get(dataset)
    files = section.get("files") if isinstance(section, dict) else None
    if not isinstance(files, dict):
        raise UserError(f"{listing}: outputs.{dataset}.files is missing or not a JSON object")
    listed = {}
    for name, entry in files.items():
        sha256 = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(sha256, str):
            raise UserError(f"{listing}: outputs.{dataset}.files[{name!r}].sha256 is missing or not a string")
        listed[name] = sha256
    return listed


def events_changed(manifest: RunManifest, data_dir: Path, day: date) -> str | None:
    """Why the published output of ``day`` no longer covers its stored events (None when it
    does): events ingested after the day was scored (a collector's backlog) were never
    scored, and backfill skipped the day as done (found by an attack: two 500-action
    downloads stayed unscored). Compared by the parts the run read (its
    ``inputs.events_fingerprint``), else, for a run from before it was recorded, by the
    row count. A day whose events were pruned since (retention) has nothing to re-score.
    A partition that does not list is left to the score run, which names what is wrong."""
    try:
        files = io.partition_files(Path(data_dir), io.EVENTS, day)
        if not files:
            return None
        recorded = manifest.get("inputs", {}).get("events_fingerprint")
        if recorded is not None and recorded == io.parts_fingerprint(files):
            return None  # the usual case: names and sizes only, no footer read
        scored = manifest.get("counts", {}).get("input_rows")
        stored = io.partition_row_count(Path(data_dir), io.EVENTS, day)
        same = recorded is None and scored in (None, stored)
    except (UserError, OSError):
        return None
    if same:
        return None
    then = "?" if scored is None else f"{scored:,}"
    return f"its events changed after it was scored ({then} events scored, {stored:,} stored now)"


def lookback_changed(manifest: RunManifest, data_dir: Path, seen: dict[str, str | None] | None = None) -> str | None:
    """Why the day's baselines no longer match the stored events of its lookback (None when
    they do): events ingested late into an earlier day reach the baselines of every later
    day that looks back on it, and those days were published as current (a backlog for
    Monday changed nothing Tuesday to Friday had been scored with). Compared per lookback
    day with the run's ``inputs.lookback_events``; a day whose events were pruned since
    (retention) changed nothing the aggregates hold. ``seen`` caches fingerprints across
    the days of one look (monitor over a year lists each day once)."""
    recorded = manifest.get("inputs", {}).get("lookback_events")
    if not isinstance(recorded, dict):
        return None  # a run from before it was recorded
    cache = {} if seen is None else seen
    changed = []
    for day, then in sorted(recorded.items()):
        if day not in cache:
            try:
                cache[day] = io.partition_fingerprint(Path(data_dir), io.EVENTS, day)
            except (UserError, OSError):
                cache[day] = None  # a partition that does not list is left to the score run
        now = cache[day]
        if now is not None and now != then:
            changed.append(day)
    if not changed:
        return None
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return (f"the events of {', '.join(changed[:3])}{more} in its baselines' lookback changed after it was scored "
            "(late events its baselines did not learn)")


def scored_with(output_dir: Path, day: date, model_version: str) -> bool:
    """True when ``day`` has a complete output made by ``model_version`` whose entity risk is
    not marked stale (backfill skips it; a stale day is re-scored, which clears the mark).

    An unreadable manifest, or a day whose links were made by hand (naming another day's
    version), counts as not scored: backfill then re-scores the day, and score refuses a
    foreign layout with its reason.
    """
    try:
        manifest = read_manifest(output_dir, day)
    except UserError:
        return False
    return bool(manifest and manifest.get("status") == SUCCEEDED
                and manifest.get("model", {}).get("version") == model_version
                and not manifest.get("risk_stale"))


def row_conservation(input_rows: int, scored_rows: int, quarantined_rows: int) -> RowConservation:
    """Every validated event of the day is scored exactly once; quarantined rows are the
    ones ingest rejected, so received = input + quarantined."""
    return {
        "input_rows": input_rows,
        "scored_rows": scored_rows,
        "quarantined_rows": quarantined_rows,
        "received_rows": input_rows + quarantined_rows,
        "ok": input_rows == scored_rows,
    }


def utc_iso(at: float) -> str:
    """Seconds since the epoch as an ISO-8601 UTC timestamp with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def amend_published(output_dir: Path, day: date, run_id: str, delivery: DeliverySection) -> bool:
    """Set the ``delivery`` section of the published manifest of ``day`` after the run (the
    delivery counts are known only once the day is published and its alerts sent).

    Written atomically into the run's own version folder, under the date's lock and only
    while that run is still the published one: a newer run of the day is never given an
    older run's figures. Returns False (and changes nothing) when another run holds the
    date, when ``run_id`` is no longer published, or for a day in the layout before versions.
    """
    output_dir = Path(output_dir)
    try:
        with date_lock(output_dir, day):
            if io.published_version(output_dir, day) != run_id:
                return False
            path = io.day_versions_dir(output_dir, day) / run_id / io.MANIFEST_NAME
            record = io.read_json(path)
            if not isinstance(record, dict) or record.get("run_id") != run_id:
                return False
            # the stored record as it is (keys this version does not know included), plus the section
            io.write_json_atomic({**record, "delivery": delivery}, path, durable=True)
            return True
    except RunLockedError:
        return False
