"""Request and response models of the inference API.

The allowed categories, string lengths, numeric ranges and the batch limit come from
settings, so the models are built per app by :func:`build_models` rather than declared
once at import: a deployment that adds an event type in its YAML gets it in validation
and in the OpenAPI schema without a code change.

Every field applies the rules of ``uba.event_rules``, which ingest applies to a whole
batch, so an event is accepted here exactly when ingest would store it: numbers must be
JSON numbers (``true`` is not ``1``, ``"5"`` is not ``5``) and finite; categories ignore
surrounding whitespace and ASCII letter case (``" LOGIN "`` is ``login``) and are
answered in the configured spelling; ids refuse control, invisible and format
characters; an object that repeats a key is refused before validation (``uba.api.body``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Literal, TypedDict, TypeVar, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
)
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError
from typing_extensions import TypeForm

from uba import event_rules as rules
from uba.dates import DateFormError, parse_date
from uba.settings import ApiSettings, EventSettings

BATCH_TOO_LARGE = "batch_too_large"
_T = TypeVar("_T")
_STRICT_MODEL = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


def parse_timestamp(value: str) -> datetime:
    """RFC 3339 text to an aware UTC datetime (naive means UTC), by the rules ingest applies.

    ``uba.event_rules`` is the one definition: a value is accepted here exactly when
    ingest would store it.
    """
    try:
        return rules.parse_timestamp(value)
    except rules.RuleError as exc:
        raise PydanticCustomError(exc.code, exc.message) from None


def _calendar_date(value: Any) -> Any:
    """A day as YYYY-MM-DD only (``uba.dates``, the CLI's rule): pydantic's own ``date``
    took ``2026-03-01T00:00:00`` and Unix seconds (``?date=0`` was 1970-01-01)."""
    if isinstance(value, date):
        return value
    try:
        return parse_date(value if isinstance(value, str) else str(value))
    except DateFormError as exc:
        raise PydanticCustomError("date_form", str(exc)) from None


# A day in a query or a body: YYYY-MM-DD (documented as JSON Schema's ``format: date``).
CalendarDate = Annotated[date, BeforeValidator(_calendar_date)]


def _id_type(max_length: int, blank_is_absent: bool = False) -> Any:
    """An id: a string or an integer (stored as its decimal text), as ingest takes it.

    ``blank_is_absent`` (optional ids): an empty or blank value means no id, as an empty
    CSV cell does in ingest.
    """

    def check(value: Any) -> str | None:
        try:
            return rules.check_id(value, max_length)
        except rules.RuleError as exc:
            if blank_is_absent and exc.kind == rules.KIND_MISSING and isinstance(value, str):
                return None
            raise PydanticCustomError(exc.code, exc.message) from None

    text_schema = {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": _ID_PATTERN}
    schema = {"anyOf": [{"type": "integer"}, text_schema]}
    return Annotated[str, PlainValidator(check), WithJsonSchema(schema)]


def _class_of(ranges: Any) -> str:
    """A regex character class body from code point ranges (``\\uXXXX`` escapes for the BMP)."""
    def char(cp: int) -> str:
        return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)
    return "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in ranges)


# An id as JSON Schema can say it: optional surrounding whitespace (event_rules.WHITESPACE)
# around at least one character, none of them a refused one (event_rules.BAD_ID_RANGES;
# lone surrogates are left out, since a JSON Schema regex sees astral characters as pairs).
_SPACE = "".join(f"\\u{ord(c):04x}" for c in rules.WHITESPACE)
_BAD = _class_of(rules.BAD_ID_RANGES)
_ID_PATTERN = f"^[{_SPACE}]*[^{_BAD}{_SPACE}](?:[^{_BAD}]*[^{_BAD}{_SPACE}])?[{_SPACE}]*$"


def _number_type(field: str) -> Any:
    """The JSON type rule of a numeric field (``event_rules.json_type_error``), before the
    strict number check and its bounds: a string, boolean, object or array is refused."""

    def check(value: Any) -> Any:
        problem = rules.json_type_error(field, value)
        if problem is not None:
            raise PydanticCustomError("number_type", problem)
        return value

    return BeforeValidator(check)


def _category_type(field: str, allowed: tuple[str, ...]) -> Any:
    """A category: a string matching a configured one up to surrounding whitespace and
    ASCII letter case (``event_rules.category_key``); the configured spelling is kept."""
    lookup = rules.category_lookup(allowed)
    message = rules.msg_category(allowed)

    def check(value: Any) -> str:
        problem = "must be one of the categories, not null" if value is None else rules.json_type_error(field, value)
        if problem is not None:
            raise PydanticCustomError("category_type", problem)
        found = lookup.get(rules.category_key(value))
        if found is None:
            raise PydanticCustomError("category", message)
        return found

    schema = {"anyOf": [{"type": "string", "enum": list(allowed)},
                        {"type": "string", "pattern": rules.category_pattern(allowed)}]}
    return Annotated[str, PlainValidator(check), WithJsonSchema(schema)]


# The cross-field rule below, as JSON Schema can say it: a timestamp, or hour_of_day and
# day_of_week. The schema offers them as alternatives, since it cannot say "must agree";
# the server also accepts both when they agree with the timestamp.
_TIME_SOURCE_SCHEMA: JsonDict = {"anyOf": [
    {"required": ["timestamp"], "properties": {"timestamp": {"type": "string"},
                                               "hour_of_day": {"type": "null"}, "day_of_week": {"type": "null"}}},
    {"required": ["hour_of_day", "day_of_week"],
     "properties": {"hour_of_day": {"type": "integer"}, "day_of_week": {"type": "integer"},
                    "timestamp": {"type": "null"}}},
]}


class EventBase(BaseModel):
    """Cross-field rule shared by every generated event model: time comes from somewhere."""

    model_config = ConfigDict(**_STRICT_MODEL, json_schema_extra=_TIME_SOURCE_SCHEMA)

    @field_validator("timestamp", mode="after", check_fields=False)
    @classmethod
    def _utc_timestamp(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return parse_timestamp(value).isoformat()

    @field_validator("hour_of_day", "day_of_week", mode="after", check_fields=False)
    @classmethod
    def _agrees_with_timestamp(cls, value: int | None, info: ValidationInfo) -> int | None:
        if "timestamp" not in info.data:  # the timestamp itself was invalid: already reported
            return value
        stamp = info.data["timestamp"]
        if stamp is None:
            if value is None:
                raise PydanticCustomError(
                    "missing_time", "is required when no timestamp is given"
                )
            return value
        when = datetime.fromisoformat(stamp)
        derived = when.hour if info.field_name == "hour_of_day" else when.weekday()
        if value is not None and value != derived:
            raise PydanticCustomError(
                "timestamp_disagrees",
                "{value} disagrees with timestamp {stamp} (UTC gives {derived})",
                {"value": value, "stamp": stamp, "derived": derived},
            )
        return derived

    def time_fields(self) -> tuple[datetime | None, int, int]:
        """(timestamp, hour_of_day, day_of_week) after validation filled the derived ones."""
        data = self.__dict__
        stamp = datetime.fromisoformat(data["timestamp"]) if data["timestamp"] else None
        return stamp, data["hour_of_day"], data["day_of_week"]


def _integral_float(value: Any) -> Any:
    """``3.0`` is the integer 3, as ingest reads it and as JSON Schema's ``integer`` means
    it; ``2.5``, ``true`` and ``"3"`` stay what they are and fail the strict int check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def whole_number(low: int, high: int, field: str = "") -> TypeForm[int]:
    """A strict integer in [low, high] that also takes an integral float; the bounds sit
    inside the type so the JSON schema states them (minimum/maximum) even when optional.
    With ``field``, its JSON type rule runs first (``event_rules.json_type_error``)."""
    checks = [BeforeValidator(_integral_float)] + ([_number_type(field)] if field else [])
    return Annotated[int, Field(strict=True, ge=low, le=high), *checks]


def _optional(form: TypeForm[_T]) -> TypeForm[_T | None]:
    """``form | None``: mypy reads ``|`` between a type form value and None as an operator."""
    return cast("TypeForm[_T | None]", form | None)


def build_event_model(events: EventSettings) -> type[EventBase]:
    """The per-event request model, with categories and limits from settings."""
    stamp = Annotated[str, Field(strict=True, min_length=1, max_length=events.max_string_length,
                                 json_schema_extra={"format": "date-time"})]
    event_type = _category_type("event_type", events.event_types)
    device_type = _category_type("device_type", events.device_types)
    duration = Annotated[float, _number_type("session_duration_sec")]
    return create_model(
        "EventIn",
        __base__=EventBase,
        __doc__="One user activity event, as in the seed's /predict payload.",
        event_id=(_id_type(events.max_string_length) | None,
                  Field(None, description="Echoed back; optional.")),
        session_id=(_id_type(events.max_string_length, blank_is_absent=True) | None,
                    Field(None, description="Optional session identifier.")),
        user_id=(_id_type(events.max_string_length), Field(examples=[123])),
        event_type=(event_type, Field(examples=["login"])),
        session_duration_sec=(
            duration,
            Field(strict=True, ge=0, le=events.max_session_duration_sec, examples=[18000]),
        ),
        events_in_session=(whole_number(1, events.max_events_in_session, "events_in_session"),
                           Field(examples=[190])),
        device_type=(device_type, Field(examples=["desktop"])),
        timestamp=(
            stamp | None,
            Field(None, description=f"RFC 3339 date-time ({rules.TIMESTAMP_GRAMMAR}), as ingest "
                  "takes it. Replaces or must agree with hour_of_day/day_of_week."),
        ),
        hour_of_day=(
            _optional(whole_number(0, 23, "hour_of_day")),
            Field(None, validate_default=True,
                  description="0-23 in UTC; required without timestamp.", examples=[2]),
        ),
        day_of_week=(
            _optional(whole_number(0, 6, "day_of_week")),
            Field(None, validate_default=True,
                  description="0=Monday..6=Sunday in UTC; required without timestamp.",
                  examples=[1]),
        ),
    )


def count_limit(max_items: int, noun: str = "events") -> Callable[[object], object]:
    """Count first: a 100k-item body is refused without validating 100k items."""

    def check(value: object) -> object:
        if isinstance(value, list) and len(value) > max_items:
            raise PydanticCustomError(
                BATCH_TOO_LARGE,
                "holds {count} {noun}; the limit is {limit} per request (api.max_batch)",
                {"count": len(value), "noun": noun, "limit": max_items},
            )
        return value

    return check


MIN_JSON_VALUES = 32_768  # parses in a few ms; leaves room to name the field of a wrong-shaped value


def max_json_values(max_items: int, per_item: int) -> int:
    """How many JSON keys and values (commas, colons, brackets) a body may hold before it
    is refused unparsed: what the largest valid body of ``max_items`` items holds, and
    never less than MIN_JSON_VALUES, so a smaller mistake still gets a 422 naming its field."""
    return max(max_items * per_item + 64, MIN_JSON_VALUES)


def build_batch_model(event_model: type[EventBase], api: ApiSettings) -> type[BaseModel]:
    """``{"events": [...]}`` with the size limit checked before any event is validated."""
    events_type = Annotated[
        list[event_model],  # type: ignore[valid-type]  # a class made at run time as a type argument
        BeforeValidator(count_limit(api.max_batch)),
        Field(min_length=1, json_schema_extra={"maxItems": api.max_batch}),
    ]
    return create_model(
        "BatchIn",
        __config__=_STRICT_MODEL,
        __doc__=f"Up to {api.max_batch} events, answered in the same order.",
        events=(events_type, ...),
    )


class Prediction(BaseModel):
    """The seed's answer (anomaly_score, is_anomaly, threshold_percentile) plus context."""

    event_id: str | None = None
    user_id: str
    anomaly_score: float = Field(description="Higher is more anomalous; -IsolationForest.score_samples.")
    is_anomaly: bool = Field(description="anomaly_score >= threshold (true also when suppressed, as the "
                                         "batch is_anomaly column)")
    suppressed: bool = Field(False, description="Flagged, but an active suppression rule matches its user "
                                                "and top reason kind: not an alert (batch `suppressed`).")
    suppressed_by: str | None = Field(None, description="The id of the rule that suppressed it.")
    threshold_percentile: float = Field(description="Percentile of the global threshold as a fraction, "
                                                    "e.g. 0.98 (as in the seed).")
    threshold: float = Field(description="The cut this event was judged against: its user's own when "
                                         "user_thresholds.enabled, else the global one.")
    global_threshold: float = Field(description="The model's global cut (threshold_percentile of the "
                                                "training scores).")
    model_version: str
    baseline_as_of: date
    known_user: bool = Field(description="False when the population baseline was used.")
    reasons: list[str]
    reason_kinds: list[str]


class PredictionBody(TypedDict):
    """:class:`Prediction` as the plain values ``/predict`` sends (built without validation on
    the hot path, ``uba.api.routes.predict.prediction``); key for key the same fields."""

    event_id: str | None
    user_id: str
    anomaly_score: float
    is_anomaly: bool
    suppressed: bool
    suppressed_by: str | None
    threshold_percentile: float
    threshold: float
    global_threshold: float
    model_version: str
    baseline_as_of: str  # ISO date
    known_user: bool
    reasons: list[str]
    reason_kinds: list[str]


class BatchPredictionBody(TypedDict):
    """:class:`BatchPrediction` as the plain values ``/predict/batch`` sends."""

    count: int
    anomalies: int
    suppressed: int
    model_version: str
    baseline_as_of: str  # ISO date
    predictions: list[PredictionBody]


class BatchPrediction(BaseModel):
    count: int
    anomalies: int = Field(description="Events with is_anomaly (suppressed ones included).")
    suppressed: int = Field(0, description="Of those, events an active suppression rule suppressed.")
    model_version: str
    baseline_as_of: date
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    model_version: str
    feature_set_version: str | None
    features: list[str]
    threshold: float
    percentile: float
    threshold_percentile: float
    baseline_as_of: date
    baseline_users: int
    # Open objects in the OpenAPI document; their keys: uba.api.model_state.ModelDescription
    per_user_thresholds: Mapping[str, object] = Field(
        description="enabled (user_thresholds.enabled) and how many users have their own cut.")
    training: Mapping[str, object] = Field(description="Training window and counts from the bundle metadata.")
    loaded_at: datetime
    scorer: str
    suppression_rules: int = Field(0, description="Suppression rules active today (UTC) in the served state.")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    model_version: str | None = None
    baseline_as_of: date | None = None
    reason: str | None = None


class ReloadResult(BaseModel):
    reloaded: bool
    changed: bool
    model_version: str
    baseline_as_of: date
    previous_model_version: str | None
    previous_baseline_as_of: date | None


# What an error answer echoes of the offending value (``uba.api.errors.safe_value``).
ShownValue = str | int | float | bool | None


class FieldError(BaseModel):  # one entry of an error answer's detail (uba.api.errors.FieldErrorItem)
    field: str
    message: str
    # Documented as any JSON value (as it always was); the answers echo a short scalar.
    value: Annotated[ShownValue, WithJsonSchema({})] = None


class ErrorBody(BaseModel):
    detail: list[FieldError] | str


# At least one character that str.strip() keeps (spelled out: regex engines differ on \s).
NOT_BLANK = "[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


_TEXT_RULE = ("no control character (C0, DEL, C1), format character (bidi override, zero-width space, "
              "U+FEFF) or line separator (U+2028, U+2029); U+200C/U+200D allowed")


def analyst_text_rule(lines: bool) -> AfterValidator:
    """The analyst text rule (``uba.event_rules.check_text``) of a name (``lines`` False: one
    line) or a note (line breaks and tabs allowed), as a feedback CSV, the triage CLI and
    suppression rules apply it: a 422 names the field and the refused code point. Blank text
    is answered as "" (the stores keep it as none). Put after the field's max_length."""

    def check(value: str) -> str:
        try:
            return rules.check_text(value, lines) or ""
        except rules.RuleError as exc:
            raise PydanticCustomError(exc.code, exc.message) from None

    return AfterValidator(check)


def analyst_text_schema(lines: bool) -> JsonDict:
    """The analyst text rule as JSON Schema can say it (schemathesis holds the server to
    it both ways): optional surrounding whitespace (event_rules.WHITESPACE, which the
    server removes) around characters none of which is refused, and in a note CR LF."""
    if lines:
        body = f"(?:[^{_class_of(rules.NOTE_REFUSED_RANGES)}]|\\r\\n)*"
    else:
        body = f"[^{_class_of(rules.TEXT_REFUSED_RANGES)}]*"
    rule = ("line breaks (CR LF read as LF) and tabs allowed" if lines else "one line") + f"; {_TEXT_RULE}"
    return {"pattern": f"^[{_SPACE}]*{body}[{_SPACE}]*$", "description": rule}


def analyst_text_field(max_length: int, lines: bool) -> Any:
    """An analyst's name or note (``lines``) of at most ``max_length`` characters, checked by
    ``analyst_text_rule`` (which runs after the length) and documented by ``analyst_text_schema``."""
    return Field(max_length=max_length, json_schema_extra=analyst_text_schema(lines))


AnalystNote = Annotated[str, analyst_text_field(rules.MAX_NOTE, lines=True), analyst_text_rule(True)]
FeedbackAnalyst = Annotated[str, analyst_text_field(rules.MAX_ANALYST, lines=False), analyst_text_rule(False)]


class FeedbackItem(BaseModel):
    """One analyst verdict on a scored event."""

    model_config = ConfigDict(extra="forbid")

    # Replaced in build_feedback_model by the event id rule of ingest and /predict
    # (uba.event_rules.check_id, with the configured max length): a string or an integer,
    # stored stripped; blank, control, invisible or format characters refused.
    event_id: str
    label: Literal["benign", "malicious"]
    analyst: FeedbackAnalyst | None = None
    note: AnalystNote | None = None


class FeedbackStored(BaseModel):
    stored: int
    benign: int
    malicious: int


def build_feedback_model(api: ApiSettings, max_id_length: int = 256) -> type[BaseModel]:
    """``{"items": [...]}`` with at most ``api.max_batch`` items, counted before any is validated.

    Each item's ``event_id`` follows the event id rule with the events' ``max_string_length``,
    so feedback can name exactly the ids ingest stores (``"e1\u200b"`` or ``"\u0000"`` are
    refused, integer ids accepted as their decimal text).
    """
    item = create_model(
        "FeedbackItem",
        __base__=FeedbackItem,
        __doc__=FeedbackItem.__doc__,
        event_id=(_id_type(max_id_length), Field(description="event_id of a scored event: a string or an "
                                                             "integer, by the event id rule (stored stripped)")),
    )
    items_type = Annotated[
        list[item],
        BeforeValidator(count_limit(api.max_batch, "items")),
        Field(min_length=1, json_schema_extra={"maxItems": api.max_batch}),
    ]
    return create_model(
        "FeedbackRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"Up to {api.max_batch} analyst verdicts, stored all or none.",
        items=(items_type, ...),
    )


EVENT_JSON_VALUES = 32  # an event has 11 fields: 11 keys, 11 values, braces, commas
FEEDBACK_JSON_VALUES = 12  # a feedback item has 4 fields


@dataclass(frozen=True)
class ApiModels:
    """The generated request models of one app, and how many JSON values their largest
    valid body holds (``uba.api.body`` refuses more before parsing)."""

    event: type[EventBase]
    batch: type[BaseModel]
    feedback: type[BaseModel]
    event_values: int
    feedback_values: int


def build_models(events: EventSettings, api: ApiSettings) -> ApiModels:
    event = build_event_model(events)
    return ApiModels(event=event, batch=build_batch_model(event, api), feedback=build_feedback_model(api, events.max_string_length),
                     event_values=max_json_values(api.max_batch, EVENT_JSON_VALUES),
                     feedback_values=max_json_values(api.max_batch, FEEDBACK_JSON_VALUES))


class RiskContribution(BaseModel):
    """One alert that built a day's entity risk."""

    alert_id: str
    type: str = Field(description="event or user_day")
    event_id: str | None = None
    score: float | None = None
    cut: float | None = None
    points: float
    reason_kinds: list[str]


class RiskDay(BaseModel):
    """A user's entity risk on one scored day."""

    event_date: date
    risk_score: float
    risk_level: Literal["low", "medium", "high", "critical"]
    risk_delta: float | None = None
    first_seen_high: date | None = None
    contributions: list[RiskContribution]
    stale: bool = Field(False, description="the day's risk is marked stale (re-score it): docs/risk.md")


class UserRisk(BaseModel):
    """``GET /users/{user_id}/risk``: the user's rows of the last ``days`` days of risk tables."""

    user_id: str
    as_of: date | None = Field(None, description="the newest day with a risk table, loaded at start or reload")
    days: int
    history: list[RiskDay] = Field(description="oldest first; a day without the user means risk below "
                                               "risk.min_score and no alert; empty for an unknown user")
