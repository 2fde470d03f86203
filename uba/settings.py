"""Typed settings for every UBA component.

Precedence, highest first: explicit overrides (CLI flags) > ``UBA_*`` environment
variables > the YAML named by ``--config`` / ``UBA_CONFIG`` > ``configs/default.yaml``
> the defaults below. The model defaults mirror ``configs/default.yaml`` (a test keeps
them equal) so an installed package without the repository still has sane values.

Environment variables: ``UBA_DATA_DIR``, ``UBA_MODEL_DIR``, ``UBA_OUTPUT_DIR`` and
``UBA_CONFIG`` as the design asks, plus ``UBA_<SECTION>__<KEY>`` for any other key
(``UBA_MODEL__N_ESTIMATORS=300``; nested keys too, ``UBA_USER_DAY__TREND__WINDOW_DAYS=9``).
Values are read as YAML, like the file. The layers are pydantic-settings sources in the
order above (its default order would put ``.env`` files and ``os.environ`` first and
never read the YAML), set only while ``load_settings`` builds.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from uba.errors import UserError
from uba.event_rules import WHITESPACE, bad_id_char, category_key

DEFAULT_CONFIG_PATH = Path("configs/default.yaml")
MAX_CONFIG_BYTES = 1 << 20  # default.yaml is ~6 KB; a config file is never megabytes
MIN_RELOAD_INTERVAL_SEC = 0.25  # a check (a pointer read, two listings) costs ~1 ms: <1% of a core
PATH_ENV_VARS = {
    "UBA_DATA_DIR": ("paths", "data_dir"),
    "UBA_MODEL_DIR": ("paths", "model_dir"),
    "UBA_OUTPUT_DIR": ("paths", "output_dir"),
}


class _Section(BaseModel):
    """A settings section: unknown keys refused, and no float setting may be infinite or NaN
    (``1e999`` reads as infinity: the bundle metadata then cannot be written as JSON, so
    ``train`` ended in a traceback after fitting; no setting means anything at infinity)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PathSettings(_Section):
    data_dir: Path = Path("data")
    model_dir: Path = Path("models")
    output_dir: Path = Path("output")


class EventSettings(_Section):
    event_types: tuple[str, ...] = ("login", "logout", "view", "click", "download")
    device_types: tuple[str, ...] = ("desktop", "mobile")
    max_string_length: int = Field(256, ge=8, le=65536)
    max_session_duration_sec: float = Field(7 * 24 * 3600, gt=0)
    max_events_in_session: int = Field(100_000, ge=1)

    @field_validator("event_types", "device_types")
    @classmethod
    def _non_empty_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Distinct names as they will be stored: trimmed, and distinct however they are spelled.

        Values are matched trimmed and ASCII-case-insensitively (``category_key``), so
        ``[login, LOGIN]`` would make ingest store ``LOGIN`` for ``login`` events and
        ``" sp "`` could never be matched as configured.
        """
        if not value or len(set(value)) != len(value):
            raise ValueError("must be a non-empty list of distinct names")
        seen: dict[str, str] = {}
        for name in value:
            if not name.strip(WHITESPACE) or name != name.strip(WHITESPACE):
                raise ValueError(f"entry {name!r} has surrounding whitespace or is blank; write it trimmed")
            bad = bad_id_char(name)
            if bad is not None:  # the id rule: "login\u200b" would be a second, look-alike category
                raise ValueError(f"entry {name!r} contains the control, invisible or format character "
                                 f"U+{ord(bad):04X}; write it without")
            key = category_key(name).casefold()
            if key in seen:
                raise ValueError(f"entries {seen[key]!r} and {name!r} are the same name in another case "
                                 "(values are matched case-insensitively); keep one")
            seen[key] = name
        return value


class IngestSettings(_Section):
    """Ingest batching and the limits that keep a hostile file from exhausting memory or time.

    A field over ``max_field_bytes`` quarantines its row; a record (CSV record, JSON Lines
    line, JSON array element) over ``max_record_bytes``, a header or object with more than
    ``max_columns`` columns, or a ``.gz`` input inflating past ``max_decompressed_bytes``
    stops the run with an error naming the file and the limit (docs/ingest.md).
    """

    batch_rows: int = Field(250_000, ge=1000)
    format: Literal["auto", "csv", "json", "jsonl", "parquet"] = "auto"
    max_field_bytes: int = Field(65_536, ge=256, le=1 << 30)
    max_record_bytes: int = Field(16 << 20, ge=1024, le=1 << 31)
    max_columns: int = Field(1_000, ge=16, le=1_000_000)
    max_decompressed_bytes: int = Field(4 << 30, ge=1 << 20)
    lock_timeout_sec: float = Field(600.0, ge=0, le=86_400)  # wait for another ingest's lock (docs/ingest.md)
    # a run quarantining more than this share of what it read exits 2 after storing what it could
    max_quarantine_ratio: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _record_holds_a_field(self) -> IngestSettings:
        if self.max_record_bytes < self.max_field_bytes:
            raise ValueError("max_record_bytes must be at least max_field_bytes")
        return self


class FeatureSettings(_Section):
    lookback_days: int = Field(28, ge=1, le=366)
    prior_strength_days: float = Field(5.0, gt=0)
    min_hour_spread: float = Field(1.0, gt=0)
    min_log_spread: float = Field(0.25, gt=0)
    prior_strength_sessions: float = Field(10.0, gt=0)
    # Peer groups (docs/features.md#peer-groups), used only where a user directory is
    # stored: a user is shrunk toward their group's baseline instead of the population's.
    peer_group_by: Literal["department", "department_role"] = "department"
    # a group with fewer users active in the lookback falls back to the population: the
    # between-user variances its priors are estimated from are too noisy below this
    peer_min_users: int = Field(10, ge=2, le=1_000_000)


class BaselineProtectionSettings(_Section):
    """Baseline poisoning protection (docs/features.md): a user's day with an alert is not
    learned into the baselines of the following days, so a persistent attacker keeps
    deviating instead of becoming the norm after a day or two."""

    enabled: bool = True
    min_active_days: int = Field(5, ge=0, le=366)
    # Alerted days older than this before the scored day are learned again: a real habit
    # change nobody triaged stops alerting after this many days instead of a whole lookback.
    max_days: int = Field(14, ge=1, le=366)


class TrainSettings(_Section):
    window_days: int = Field(21, ge=1, le=366)
    min_days: int = Field(7, ge=1, le=366)  # days of the window with events train needs (uba.training)
    max_training_rows: int = Field(2_000_000, ge=1000)

    @model_validator(mode="after")
    def _window_holds_the_minimum(self) -> TrainSettings:
        """A window shorter than the minimum would refuse every plain ``train`` (the weekly
        CronJob passes no flags): said at load, not on the first night."""
        if self.min_days > self.window_days:
            raise ValueError(f"min_days ({self.min_days}) is more than window_days ({self.window_days}): every "
                             "train would be refused; lower min_days or widen window_days")
        return self


class ModelSettings(_Section):
    n_estimators: int = Field(200, ge=10, le=5000)
    contamination: float = Field(0.02, gt=0, le=0.5)
    max_samples: int | Literal["auto"] = "auto"
    random_state: int = Field(42, ge=0, le=2**32 - 1)  # scikit-learn's range for a seed

    @field_validator("max_samples")
    @classmethod
    def _positive_or_auto(cls, value: int | str) -> int | str:
        """scikit-learn's IsolationForest refuses fewer than one sample, but only once train has
        read the whole window, and then with a traceback: checked here, at load."""
        if value != "auto" and int(value) < 1:
            raise ValueError("must be 'auto' or an integer of at least 1")
        return value


class ThresholdSettings(_Section):
    percentile: float = Field(98.0, gt=50, lt=100)
    max_reasons: int = Field(3, ge=1, le=10)


MIN_ROWS_FOR_RAY = 10_000_000


class RaySettings(_Section):
    address: str | None = None
    num_workers: int = Field(2, ge=1, le=1024)
    num_shards: int = Field(8, ge=1, le=100_000)  # unused: shards come from scoring.chunk_rows
    max_retries: int = Field(3, ge=0, le=100)
    # below this many events a day without a Ray address runs in-process (threads): on one
    # machine they do the same work without Ray's start-up (docs/batch-scoring.md, measured)
    min_rows_for_ray: int = Field(MIN_ROWS_FOR_RAY, ge=0)
    object_store_memory_mb: int | None = Field(None, ge=64)


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # 0: any free port, named in the startup line
    workers: int = Field(1, ge=1, le=64)
    max_batch: int = Field(1000, ge=1, le=100_000)
    api_keys_env: str = "UBA_API_KEYS"
    api_key_file: Path | None = None
    max_body_bytes: int = Field(2_097_152, ge=1024, le=1 << 30)
    scorer: Literal["compact", "sklearn"] = "compact"
    sklearn_training_matrix: Path | None = None
    reload_interval_sec: float = Field(0, ge=0, le=86400)
    access_log: bool = True
    access_log_buffer_bytes: int = Field(65536, ge=0, le=16 << 20)
    access_log_flush_sec: float = Field(1.0, gt=0, le=60)
    # Longer than the idle timeout of the proxies in front (nginx and AWS ALB: 60 s), so the
    # server never closes a kept-alive connection a proxy is about to reuse (a 502 there).
    keep_alive_sec: int = Field(75, ge=1, le=3600)

    @field_validator("host")
    @classmethod
    def _bind_address(cls, value: str) -> str:
        """Refused at load with the field named, not by uvicorn's bind after start-up."""
        return _check_host(value)

    @field_validator("reload_interval_sec")
    @classmethod
    def _off_or_sane(cls, value: float) -> float:
        """0 turns the periodic check off; anything shorter than MIN_RELOAD_INTERVAL_SEC would only
        burn a core on directory listings (1e-9 took 93% of one)."""
        if 0 < value < MIN_RELOAD_INTERVAL_SEC:
            raise ValueError(f"must be 0 (off) or at least {MIN_RELOAD_INTERVAL_SEC:g} seconds")
        return value


class ScoringSettings(_Section):
    """Batch scoring (``score --date``): the day is planned into shards of at most this many
    events (262,144 = Polars' default row-group size), so a worker's memory is bounded by
    one shard plus the baselines, not by the size of the day."""

    chunk_rows: int = Field(262_144, ge=1)
    # after publishing, merge each analysts' table (feedback, suppressions, triage) holding
    # at least this many parts into one (uba.alerting.compaction); 0: never
    compact_tables_after_parts: int = Field(200, ge=0)


class UserThresholdSettings(_Section):
    """Per-user adaptive thresholds: a user's cut = the global threshold moved by how far
    the user's ``user_quantile`` training score sits above everyone's, weight n / (n + prior_events),
    kept within [min_ratio, max_ratio] x the global threshold. Off by default."""

    enabled: bool = False
    prior_events: float = Field(50.0, gt=0)
    user_quantile: float = Field(0.9, ge=0.5, lt=1)
    min_ratio: float = Field(0.9, gt=0, le=1)
    max_ratio: float = Field(1.3, ge=1)


class MonitoringSettings(_Section):
    """Drift checks of each score run against the bundle's training reference (PSI, alert rate)."""

    psi_warn: float = Field(0.1, gt=0)
    psi_drift: float = Field(0.25, gt=0)
    min_drifted_features: int = Field(1, ge=1)
    ignore_features: tuple[str, ...] = ("event_weekday", "log_history_days")
    weekday_reference_min_days: int = Field(2, ge=1)
    reference_min_history_days: int = Field(7, ge=0)
    confidence: float = Field(0.999, gt=0.5, lt=1)
    alert_rate_tolerance: float = Field(1.0, gt=0)
    min_rows: int = Field(500, ge=1)
    fail_on_drift: bool = False


class TrendSettings(_Section):
    """Multi-day user-day signals (``uba.alerting.trends``): the user's recent active days on the same
    side of their own history before the window, pooled (Stouffer) and tested one-sided at
    ``alpha`` against Student's t, or adding up in a CUSUM (slack ``cusum_k``, limit ``cusum_h``)
    over the window's active days. Variances are shrunk toward the population's median with ``prior_days``."""

    enabled: bool = True
    window_days: int = Field(7, ge=2, le=60)
    min_days: int = Field(3, ge=2, le=60)
    alpha: float = Field(0.001, gt=0, lt=0.5)
    max_day_z: float = Field(3.0, gt=0)
    cusum_k: float = Field(0.75, ge=0)
    cusum_h: float = Field(4.0, gt=0)
    min_history_days: int = Field(7, ge=2)
    prior_days: float = Field(5.0, ge=0)
    min_downloads: int = Field(6, ge=1)
    min_download_share: float = Field(0.01, gt=0, lt=1)
    min_hour_sd: float = Field(0.5, gt=0)
    min_log_duration_sd: float = Field(0.1, gt=0)
    # Leave out of a signal the user's earlier days whose fact an event alert already tells
    # (docs/operations.md).
    skip_explained_days: bool = True

    @model_validator(mode="after")
    def _run_fits(self) -> TrendSettings:
        if self.min_days > self.window_days:
            raise ValueError("min_days must be at most window_days (a run lives inside the window)")
        return self


class UserDaySettings(_Section):
    """User-day alerts: a whole day unusual for the user (downloads, sessions, events, weekday),
    and the multi-day signals of ``trend``."""

    enabled: bool = True
    download_ratio: float = Field(10.0, gt=1)
    min_downloads: int = Field(10, ge=1)
    spread_download_ratio: float = Field(5.0, gt=1)
    spread_session_ratio: float = Field(3.0, gt=1)
    spread_min_downloads: int = Field(5, ge=1)
    spread_min_sessions: int = Field(4, ge=1)
    session_ratio: float = Field(4.0, gt=1)
    min_sessions: int = Field(8, ge=1)
    event_ratio: float = Field(5.0, gt=1)
    min_events: int = Field(100, ge=1)
    weekday_min_weeks: int = Field(3, ge=1)
    weekday_min_events: int = Field(5, ge=1)
    prior_days: float = Field(5.0, gt=0)
    rate_floor: float = Field(0.5, gt=0)
    trend: TrendSettings = TrendSettings()


RISK_LEVELS = ("low", "medium", "high", "critical")


class RiskSettings(_Section):
    """Entity risk (docs/risk.md): a 0-100 score per user carried from day to day.

    Today's points (alerts weighted by how far over their cut, user-day alerts, repeats of
    one kind discounted, several kinds boosted, privileged/critical users weighed more)
    are added to yesterday's score decayed by ``half_life_days`` per calendar day:
    one day's own points close at most ``max_day_gain`` of the gap to 100 and multi-day
    signals at most ``sustained_day_gain`` of what is left, so persistence over days, not
    one loud day, is what reaches high (docs/risk.md).
    """

    half_life_days: float = Field(3.0, gt=0, le=365)
    scale_points: float = Field(10.0, gt=0)
    max_day_gain: float = Field(0.55, gt=0, le=1)
    # A multi-day signal stands for two days or more: it closes up to what two capped days
    # close, 1 - (1 - 0.55) ** 2.
    sustained_day_gain: float = Field(0.7975, gt=0, le=1)
    event_points: float = Field(10.0, ge=0)
    margin_unit: float = Field(0.05, gt=0)
    max_margin_factor: float = Field(4.0, ge=1)
    user_day_points: float = Field(20.0, ge=0)
    max_user_day_strength: float = Field(4.0, gt=0)
    repeat_factor: float = Field(0.5, gt=0, le=1)
    max_repeats: int = Field(10, ge=1, le=1000)
    diversity_bonus: float = Field(0.25, ge=0)
    max_diversity_kinds: int = Field(4, ge=1, le=50)
    privileged_weight: float = Field(1.5, gt=0)
    criticality_weights: dict[str, float] = Field(
        default_factory=lambda: {"low": 1.0, "medium": 1.0, "high": 1.25, "critical": 1.5})
    medium_cut: float = Field(40.0, gt=0, lt=100)
    high_cut: float = Field(70.0, gt=0, lt=100)
    critical_cut: float = Field(90.0, gt=0, lt=100)
    min_score: float = Field(1.0, ge=0, lt=100)
    history_days: int = Field(30, ge=1, le=366)

    @field_validator("criticality_weights")
    @classmethod
    def _known_levels(cls, value: dict[str, float]) -> dict[str, float]:
        """Only the directory's criticality levels; a level left out weighs 1."""
        unknown = sorted(set(value) - set(RISK_LEVELS))
        if unknown:
            raise ValueError(f"unknown criticality {unknown[0]!r}; use {', '.join(RISK_LEVELS)}")
        if any(not (0 < w < float("inf")) for w in value.values()):
            raise ValueError("weights must be positive numbers")
        return value

    @model_validator(mode="after")
    def _cuts_increase(self) -> RiskSettings:
        if not self.medium_cut < self.high_cut < self.critical_cut:
            raise ValueError("the level cuts must increase: medium_cut < high_cut < critical_cut")
        return self


# \Z, not $: "$" also matches before a final newline, so "alerts\n" passed as a sink name.
SINK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
APP_NAME = re.compile(r"[\x21-\x7e]{1,48}\Z")  # RFC 5424 APP-NAME: 1-48 printable US-ASCII, no space


def _check_host(host: str) -> str:
    """A host name or address as it goes on the wire: no spaces, controls or scheme."""
    if not host or len(host) > 253 or any(c.isspace() or ord(c) < 0x21 or c in "/@?#" for c in host):
        raise ValueError("must be a host name or IP address (no scheme, path or spaces)")
    return host


class _SinkBase(_Section):
    """What every alert sink has: a unique name (the ledger key), batching and retry limits.

    Retries back off exponentially with jitter: attempt n waits between half and all of
    ``min(backoff_max_sec, backoff_base_sec * 2**(n-1))`` (docs/alerting.md#delivery).
    """

    name: str
    batch_size: int = Field(100, ge=1, le=10_000)
    timeout_sec: float = Field(10.0, gt=0, le=600)
    max_attempts: int = Field(5, ge=1, le=100)
    backoff_base_sec: float = Field(1.0, gt=0, le=3600)
    backoff_max_sec: float = Field(60.0, gt=0, le=86_400)
    verify_tls: bool = True
    ca_file: Path | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        """The name keys the ledger and appears in file names and logs: keep it plain."""
        if not SINK_NAME.match(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> _SinkBase:
        if self.backoff_max_sec < self.backoff_base_sec:
            raise ValueError("backoff_max_sec must be at least backoff_base_sec")
        return self


class WebhookSink(_SinkBase):
    """HTTP(S) POST of JSON batches, signed with HMAC-SHA256 (``X-UBA-Signature``)."""

    type: Literal["webhook"] = "webhook"
    url: str
    format: Literal["ocsf", "ecs", "jsonl", "slack"] = "ocsf"
    secret_envs: tuple[str, ...] = Field((), max_length=2)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        """Refused at load, so a typo never surfaces only after a night of scoring. Only
        printable ASCII: http.client cannot send anything else in a request line, and a
        URL with a non-ASCII character (``UnicodeEncodeError``) crashed every delivery run
        with a traceback, one with DEL (``\x7f``) was retried for ever with the URL's path
        (a Slack webhook's secret) in the log and the ledger's ``last_error``."""
        if any(c.isspace() or not ("\x21" <= c <= "\x7e") for c in value):
            raise ValueError("must be an http:// or https:// URL of printable ASCII without spaces or control "
                             "characters (percent-encode other characters)")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if port == 0:
            raise ValueError("has port 0")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials (user:password@); sign requests with secret_envs")
        return value

    @field_validator("secret_envs")
    @classmethod
    def _env_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        if len(set(value)) != len(value):
            raise ValueError("names the same variable twice")
        return value


class SyslogSink(_SinkBase):
    """RFC 5424 messages over TCP with octet-counted framing (RFC 6587), TLS optional (RFC 5425)."""

    type: Literal["syslog"] = "syslog"
    host: str
    port: int = Field(514, ge=1, le=65535)
    tls: bool = False
    payload: Literal["cef", "json"] = "cef"
    app_name: str = "uba"
    facility: int = Field(10, ge=0, le=23)  # 10 = security/authorization (authpriv)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_host(value)

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, value: str) -> str:
        if not APP_NAME.match(value):
            raise ValueError("must be 1-48 printable ASCII characters without spaces (RFC 5424 APP-NAME)")
        return value


Sink = Annotated[WebhookSink | SyslogSink, Field(discriminator="type")]
SINK_TYPES = ("webhook", "syslog")
AlertKind = Literal["alerts", "user-days", "risk"]


class AlertingSettings(_Section):
    """Delivery of alerts to webhooks and syslog through a durable outbox (docs/alerting.md#delivery).

    No sinks by default: nothing is enqueued or sent until one is configured.
    """

    sinks: tuple[Sink, ...] = ()
    deliver_after_score: bool = True
    deliver_budget_sec: float = Field(60.0, ge=0, le=86_400)
    what: tuple[AlertKind, ...] = ("alerts", "user-days", "risk")
    risk_min_level: Literal["low", "medium", "high", "critical"] = "high"

    @field_validator("sinks")
    @classmethod
    def _unique_names(cls, value: tuple[Sink, ...]) -> tuple[Sink, ...]:
        names = [sink.name for sink in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"sink name {repeated[0]!r} is used twice; names key the delivery ledger")
        return value

    @field_validator("what")
    @classmethod
    def _some_kind(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("must be a non-empty list of distinct kinds (alerts, user-days, risk)")
        return value


class Settings(BaseSettings):
    """Every section; built from its layers only by ``load_settings``.

    ``Settings()`` is the model defaults and ``Settings(section=...)`` exactly what is
    given: the environment and the YAML are read only while ``load_settings`` runs, so
    a test or a library caller never picks up a stray ``UBA_*`` variable.
    """

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False,
        env_prefix="UBA_", env_nested_delimiter="__", case_sensitive=False,
    )

    paths: PathSettings = PathSettings()
    events: EventSettings = EventSettings()
    ingest: IngestSettings = IngestSettings()
    features: FeatureSettings = FeatureSettings()
    baseline_protection: BaselineProtectionSettings = BaselineProtectionSettings()
    train: TrainSettings = TrainSettings()
    model: ModelSettings = ModelSettings()
    threshold: ThresholdSettings = ThresholdSettings()
    ray: RaySettings = RaySettings()
    api: ApiSettings = ApiSettings()
    scoring: ScoringSettings = ScoringSettings()
    user_thresholds: UserThresholdSettings = UserThresholdSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    user_day: UserDaySettings = UserDaySettings()
    risk: RiskSettings = RiskSettings()
    alerting: AlertingSettings = AlertingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (the init arguments) first, then the layers ``load_settings`` set for this
        build, highest first: the library's own order would read ``os.environ`` and
        ``.env`` files on every ``Settings()``, and knows nothing of the YAML."""
        return (init_settings, *_LOWER_LAYERS.get())


_LOWER_LAYERS: ContextVar[tuple[PydanticBaseSettingsSource, ...]] = ContextVar("_LOWER_LAYERS", default=())


class _RepeatedKeysRefused:
    """Constructor part of the settings loaders: a key given twice in one mapping is an
    error. It used to be silently last-wins, so a second ``api:`` section further down
    quietly replaced the first."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]  # the loader's
                try:
                    seen = first_line.get(key)
                except TypeError:  # an unhashable key: SafeLoader refuses it below
                    continue
                line = key_node.start_mark.line + 1
                if seen is not None:
                    raise yaml.YAMLError(f"the key {_short(key)!r} is repeated at line {line} "
                                         f"(first at line {seen}); each key may appear once")
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc]  # the loader's


class _NoAliasLoader(_RepeatedKeysRefused, yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types: SafeLoader is Any
    """SafeLoader that refuses aliases (``*name``) and repeated keys.

    A few lines of nested aliases expand to billions of nodes when validated (a "billion
    laughs" hung the CLI at 2.5 GB), and a settings file never needs them.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"YAML aliases (*name) are not allowed in settings, at line {mark.line + 1}")
        return super().compose_node(parent, index)


# libyaml's parser (PyYAML's C extension), when installed: the pure-Python one took ~50 ms
# of every command's start for configs/default.yaml, the C one ~3 ms.
_LibyamlLoader: type | None = None
if getattr(yaml, "__with_libyaml__", False):
    class _LibyamlLoader(_RepeatedKeysRefused, yaml.CSafeLoader):  # type: ignore[misc,no-redef]
        """``_NoAliasLoader``'s constructor on libyaml's parser (aliases: ``_shares_nodes``)."""


_UNDECIDED = object()
# Where libyaml's scanner reads what PyYAML's refuses, or reads it otherwise: a tab (PyYAML
# refuses it in many places), a byte-order mark after the first character (libyaml skips one
# at the start of any line, so "\ufeff  port: 1" became an indented key), "?" (a flow
# entry "y?" that PyYAML refuses), "!" (libyaml reads an empty node tagged "!" as "", PyYAML
# as null: "object_store_memory_mb: !" was refused, "api_key_file: !" became the path ".") and
# a comment right after a block scalar's header ("a: >#c", which PyYAML refuses). Such text
# goes to the pure-Python loader.
_LIBYAML_DIFFERS = re.compile("[\t?!]|[|>][-+0-9]*#|.\ufeff", re.DOTALL)


def _parse_with_libyaml(text: str) -> object:
    """What ``_NoAliasLoader`` reads from ``text``, through libyaml; ``_UNDECIDED`` for
    anything but a clean read (an alias, a character PyYAML's reader refuses, any error),
    which the pure-Python loader then reads again, so results and messages are its own."""
    if _LibyamlLoader is None or yaml.reader.Reader.NON_PRINTABLE.search(text) or _LIBYAML_DIFFERS.search(text):
        return _UNDECIDED
    loader = _LibyamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:  # an empty document
            return None
        return _UNDECIDED if _shares_nodes(node) else loader.construct_document(node)
    except Exception:  # noqa: BLE001  # reported by the pure-Python loader, in its words
        return _UNDECIDED
    finally:
        loader.dispose()


def _shares_nodes(root: Any) -> bool:
    """Whether a node appears twice in the composed tree: what an alias (``*name``) makes,
    which libyaml resolves where ``_NoAliasLoader`` would refuse it."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            return True
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return False


def _short(text: object, limit: int = 80) -> str:
    """One printable line of at most ``limit`` characters, for error messages."""
    line = re.sub(r"[^\x20-\x7e]", "?", str(text))
    return line if len(line) <= limit else line[:limit] + "..."


def _yaml_problem(exc: BaseException) -> str:
    """What the YAML parser objected to and where, without the quoted file snippet
    PyYAML adds (a config must not be echoed, e.g. into a CI log)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"{_short(exc.reason)} (character #x{exc.character:04x}) at position {exc.position}"
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", exc.problem or exc.context or "syntax error")
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return _short(problem) + where
    if isinstance(exc, yaml.YAMLError):
        return _short(exc, 120)
    return "a value cannot be read as its type (e.g. an integer of thousands of digits, an impossible date)"


def parse_yaml(text: str) -> object:
    """YAML without aliases; any parse failure is a UserError-ready sentence."""
    data = _parse_with_libyaml(text)
    if data is not _UNDECIDED:
        return data
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        raise ValueError(_yaml_problem(exc)) from exc


def _read_config_text(path: Path) -> str:
    """A regular file of at most MAX_CONFIG_BYTES of UTF-8: a FIFO or device named as
    the config would block or never end, and a huge file is never a config."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CONFIG_BYTES:
            what = "not a regular file" if not stat.S_ISREG(info.st_mode) else f"larger than {MAX_CONFIG_BYTES} bytes"
            raise UserError(f"cannot read config file {path}: {what}")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"cannot read config file {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.start})") from exc


def _read_yaml(path: Path) -> dict[str, object]:
    text = _read_config_text(path)
    try:
        data = parse_yaml(text)
    except ValueError as exc:
        raise UserError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:  # an empty file (or only comments): every default
        data = {}
    if not isinstance(data, dict):  # [] and "" too: falsy, they used to pass as {}
        raise UserError(f"config file {path} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def _env_value(raw: str) -> object:
    """An environment value read as a YAML scalar or flow collection, as in the config file
    ('300' is 300, '[login, view]' a list); what is not plain YAML stays the raw string."""
    try:
        return parse_yaml(raw)
    except ValueError:
        return raw


class _SectionEnvSource(EnvSettingsSource):
    """``UBA_<SECTION>__<KEY>`` (and deeper, ``UBA_USER_DAY__TREND__WINDOW_DAYS``) from the
    given mapping, each value read as YAML. A name without ``__`` is never a setting
    (``UBA_API_KEYS``, ``UBA_FAULT_*``), so only names with one are read."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        decoded = {name.lower(): _env_value(raw) for name, raw in self._given.items()
                   if name.upper().startswith("UBA_") and "__" in name}
        return decoded  # type: ignore[return-value]  # YAML-decoded objects, not str: see decode_complex_value

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: object) -> object:
        """Already decoded (as YAML, not the library's JSON) when the variables were read."""
        return value


class _PathEnvSource(PydanticBaseSettingsSource):
    """The design's own names for the three paths: ``UBA_DATA_DIR``, ``UBA_MODEL_DIR``,
    ``UBA_OUTPUT_DIR`` (an empty one is unset). Below ``UBA_PATHS__*``, which names the
    same key more precisely."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._given = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[object, str, bool]:
        return None, field_name, False  # unused: __call__ reads the three names directly

    def __call__(self) -> dict[str, dict[str, str]]:
        paths = {key: self._given[var] for var, (_, key) in PATH_ENV_VARS.items() if self._given.get(var)}
        return {"paths": paths} if paths else {}


def _unknown_env_sections(env: Mapping[str, str]) -> list[str]:
    """``UBA_<NAME>__...`` whose NAME is no section: refused like an unknown YAML section
    (the library would silently ignore it, and a typo would then change nothing)."""
    sections = set(Settings.model_fields)
    return sorted(name for name in env
                  if name.upper().startswith("UBA_") and "__" in name
                  and name[4:].partition("__")[0].lower() not in sections)


def _env_origin(loc: tuple[int | str, ...], env: Mapping[str, str]) -> str | None:
    """The environment variable that set the setting at ``loc``, if one did."""
    keys = [str(p) for p in loc if not isinstance(p, int)]
    for depth in range(len(keys), 1, -1):
        wanted = "UBA_" + "__".join(keys[:depth]).upper()
        named = next((name for name in sorted(env) if name.upper() == wanted
                      or name.upper().startswith(wanted + "__")), None)
        if named is not None:
            return named
    for var, (section, key) in PATH_ENV_VARS.items():
        if keys[:2] == [section, key] and env.get(var):
            return var
    return None


def _without_secrets(value: object) -> object:
    """A URL's user:password, path and query replaced by ``***`` / ``...``: a sink URL refused
    for carrying credentials must not print them into CI and pod logs through its own error
    line, nor a Slack webhook URL refused for a stray space or character its path, which is
    its secret (logs show a webhook as scheme, host and port only, docs/alerting.md)."""
    if not isinstance(value, str) or "://" not in value:
        return value
    scheme, _, rest = value.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    path, mark, _query = path.partition("?")
    return f"{scheme}://{netloc}{slash}{path and '...'}{mark and '?***'}"


def _format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming the setting, the value given and what is allowed; never pydantic's dump."""
    first = exc.errors()[0]
    loc = list(first["loc"])  # a union member's tag ('sinks.0.webhook.url') is not a key the user wrote
    loc = [p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in SINK_TYPES)]
    where = _short(".".join(str(p) for p in loc))
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        return f"unknown setting '{where}' ({source})"
    shown = (f"<{type(value).__name__} of {len(value)} entries>" if isinstance(value, dict | list)
             else _short(repr(_without_secrets(value))))
    return f"invalid setting '{where}' = {shown}: {_short(first['msg'], 200)} ({source})"


def _config_layer(config_path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> tuple[dict[str, object], list[str]]:
    """The YAML named by the flag or ``UBA_CONFIG``, else ``configs/default.yaml`` if present."""
    chosen = config_path or env.get("UBA_CONFIG")
    if chosen:
        return _read_yaml(Path(chosen)), [str(chosen)]
    if DEFAULT_CONFIG_PATH.is_file():
        return _read_yaml(DEFAULT_CONFIG_PATH), [str(DEFAULT_CONFIG_PATH)]
    return {}, []


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the one settings object from all layers: flags > environment > YAML > defaults.

    ``overrides`` is a nested mapping of CLI flag values (``{"paths": {"data_dir": x}}``);
    ``None`` values are dropped so an unset flag never hides a lower layer.
    """
    env = os.environ if env is None else env
    config, sources = _config_layer(config_path, env)
    source = ", ".join(sources + ["environment", "flags"])
    strays = [key for key in config if not isinstance(key, str)]
    if strays:  # a section name is text; 1:, null: or [a]: would reach pydantic as a keyword
        raise UserError(f"unknown setting '{_short(strays[0])}' ({source})")
    unknown = _unknown_env_sections(env)
    if unknown:
        raise UserError(f"unknown setting '{_short(unknown[0][4:].partition('__')[0].lower())}' "
                        f"(environment {_short(unknown[0])})")
    # Any: pydantic's typed Settings(**kwargs) wants each section's model, but takes (and
    # validates) the raw mapping a flag section is
    flags: dict[str, Any] = {section: {k: v for k, v in values.items() if v is not None}
                             for section, values in (overrides or {}).items()}
    layers = (_SectionEnvSource(Settings, env), _PathEnvSource(Settings, env),
              InitSettingsSource(Settings, init_kwargs=config))
    token = _LOWER_LAYERS.set(layers)
    try:
        return Settings(**flags)
    except ValidationError as exc:
        loc = tuple(exc.errors()[0]["loc"])
        from_flag = len(loc) > 1 and str(loc[1]) in flags.get(str(loc[0]), {})
        named = None if from_flag else _env_origin(loc, env)
        raise UserError(_format_validation_error(exc, f"environment {named}" if named else source)) from exc
    finally:
        _LOWER_LAYERS.reset(token)
