"""Is the model still looking at the world it was trained on?

Each score run compares the day with the training reference stored in the bundle:

- per feature, the population stability index (PSI) of the day's values over the
  training quantile bins (``feature_reference``),
- the PSI of the day's anomaly scores over training score quantiles (``score_summary``),
- the alert rate at the model's global threshold against the rate the percentile
  promises (``1 - percentile / 100``).

PSI = sum((a - e) * ln(a / e)) over bins, a = the day's share, e = training share;
by the usual rule of thumb < 0.1 is stable, 0.1-0.25 a moderate shift and > 0.25 a
shift big enough that the model's notion of "normal" no longer fits. The limits are
settings (``monitoring``).

The work is split into mergeable *counts* (bin counts add up across chunks and Ray
shards) and a report built from the merged counts, so a day that is scored in pieces
gets exactly the same report as one scored at once.

What a clean day is compared with (``drift_reference``, built at training). Measured on
clean generated days, the PSI of a day against its training reference was 0.2-0.7 while
nothing had changed, for three reasons, each fixed where it arises:

- in-sample scores: the forest saw the training rows, so they score lower than any later
  day. The reference scores are *cross-fitted* instead: each training day is scored by a
  forest fitted on the other half of the window's days.
- warm-up: a user's first days score high because their baseline is still the
  population's. Only rows whose user had ``monitoring.reference_min_history_days`` of
  history enter the reference.
- sampling: events of a user's day share the user, session, device and hours, so a day
  of 2,400 events from 230 users carries about 230 independent observations. A PSI
  that small samples show by chance is noise: the verdict judges the *excess* PSI, the
  PSI minus what chance gives at ``monitoring.confidence`` for the day's active users
  and the reference's user-days (n * PSI is about chi-squared with bins - 1 degrees
  of freedom). The alert check counts users with an alert, for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Final, TypedDict

import numpy as np

from uba.manifest import AlertCheck, DriftJudgement, DriftLimits, DriftReport, RunManifest
from uba.model.bundle import (
    BundleMetadata,
    DriftReference,
    FeatureBins,
    ReferencePart,
    ScoreBins,
    WeekdayReference,
    bin_proportions,
    feature_reference,
    score_summary,
)
from uba.model.forest import fit_detector

if TYPE_CHECKING:
    from uba.settings import ModelSettings, MonitoringSettings, Settings

SCORE_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99)
# Score bins of a cross-fitted reference: quintiles of the bulk, where a shift of "normal"
# shows, and the top 5%, where a shift of behaviour the forest finds odd shows. The alert
# tail itself (the top ~2%) holds too few users a day for a PSI; the alert check judges it.
REFERENCE_SCORE_LEVELS = (0.2, 0.4, 0.6, 0.8, 0.95)
DRIFT_REFERENCE_KEY: Final = "drift_reference"
# Share floor before taking logs: an empty bin would otherwise make the PSI infinite.
MIN_SHARE = 1e-4
STATUS_ORDER = ("ok", "warn", "drift")


class CrossFittedFields(TypedDict, total=False):
    """What the chosen part of a cross-fitted ``drift_reference`` adds to the day's metadata;
    absent when the bundle predates that reference (``score_reference`` is then None or absent)."""

    score_reference: ScoreBins | None
    reference_user_days: int
    reference_alerted_user_days: int
    constant_features: list[str]


class DayReference(BundleMetadata, CrossFittedFields):
    """The bundle metadata with the reference a day is compared with (``reference_for_weekday``):
    its ``feature_reference`` (and for older bundles ``score_summary``) replaced by the chosen
    part's. Built per run and sent to the shards, never stored.
    """


@dataclass
class DriftCounts:
    """Bin counts of one day (or one chunk of it); ``merge`` adds another chunk's counts."""

    rows: int = 0
    alerts: int = 0
    feature_counts: dict[str, np.ndarray] = field(default_factory=dict)
    score_counts: np.ndarray | None = None

    def merge(self, other: DriftCounts) -> DriftCounts:
        """Counts of both parts together (order does not matter: integer sums)."""
        features = dict(self.feature_counts)
        for name, counts in other.feature_counts.items():
            features[name] = features[name] + counts if name in features else counts.copy()
        if self.score_counts is None:
            scores = other.score_counts
        elif other.score_counts is None:
            scores = self.score_counts
        else:
            scores = self.score_counts + other.score_counts
        return DriftCounts(self.rows + other.rows, self.alerts + other.alerts, features, scores)


def score_reference(metadata: DayReference) -> tuple[list[float], list[float]] | None:
    """(cuts, training shares) for the score PSI: the cross-fitted reference's bins when
    the bundle has one, else the levels of SCORE_LEVELS from the training score quantiles.
    """
    own = metadata.get("score_reference")
    if own:
        return [float(c) for c in own["cuts"]], [float(p) for p in own["proportions"]]
    pairs = [(float(lv), float(v)) for lv, v in _stored_quantiles(metadata)
             if any(abs(float(lv) - want) < 1e-12 for want in SCORE_LEVELS)]
    cuts: list[float] = []
    levels: list[float] = []
    for level, value in pairs:
        if cuts and value <= cuts[-1]:
            continue
        cuts.append(value)
        levels.append(level)
    if not cuts:
        return None
    bounds = [0.0, *levels, 1.0]
    return cuts, [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]


def _stored_quantiles(metadata: DayReference) -> list[tuple[float, float]]:
    """(level, value) of the training score quantiles (``score_summary``); none when the
    bundle has no summary."""
    summary = metadata.get("score_summary")
    quantiles = summary.get("quantiles") if summary else None
    if not quantiles:
        return []
    return list(zip(quantiles.get("levels", []), quantiles.get("values", []), strict=False))


def _feature_bins(metadata: DayReference) -> dict[str, FeatureBins]:
    """The training bins per feature (``feature_reference``); none when the bundle has none."""
    reference = metadata.get("feature_reference")
    return reference.get("features", {}) if reference else {}


def _counts(values: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    """Bin counts with the convention of ``uba.model.bundle.bin_proportions`` (right-closed bins)."""
    index = np.searchsorted(np.asarray(cuts, dtype=np.float64), values, side="left")
    return np.bincount(index, minlength=len(cuts) + 1).astype(np.int64)


def drift_counts(X: np.ndarray, scores: np.ndarray, metadata: DayReference) -> DriftCounts:
    """Bin the day's feature values and scores exactly as the training reference was binned.

    ``X`` has the bundle's feature columns in the bundle's order (``feature_names``).
    """
    X = np.asarray(X, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    names = list(metadata["feature_names"])
    reference = _feature_bins(metadata)
    if X.ndim != 2 or X.shape[1] != len(names) or X.shape[0] != scores.shape[0]:
        raise ValueError(f"drift_counts needs a (rows, {len(names)}) matrix and one score per row, "
                         f"got {X.shape} and {scores.shape}")
    features = {name: _counts(X[:, i], reference[name]["cuts"]) for i, name in enumerate(names)
                if name in reference}
    score_ref = score_reference(metadata)
    score_counts = _counts(scores, score_ref[0]) if score_ref else None
    alerts = int((scores >= float(metadata["threshold"])).sum())
    return DriftCounts(rows=int(scores.shape[0]), alerts=alerts, feature_counts=features,
                       score_counts=score_counts)


def psi(actual_counts: np.ndarray, expected_shares: Sequence[float]) -> float:
    """Population stability index of observed bin counts against reference shares."""
    counts = np.asarray(actual_counts, dtype=np.float64)
    expected = np.asarray(expected_shares, dtype=np.float64)
    if counts.shape != expected.shape:
        raise ValueError(f"{counts.shape[0]} bins observed but {expected.shape[0]} in the reference")
    total = counts.sum()
    if total <= 0:
        return 0.0
    actual = np.clip(counts / total, MIN_SHARE, None)
    expected = np.clip(expected, MIN_SHARE, None)
    actual, expected = actual / actual.sum(), expected / expected.sum()
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _worst(*statuses: str) -> str:
    return max(statuses, key=STATUS_ORDER.index, default="ok")


@dataclass(frozen=True)
class DayUsers:
    """How many users the day had, and how many of them had an alert at the global threshold."""

    active: int
    alerted: int


def chance_psi(bins: int, day_users: int, reference_user_days: int, confidence: float) -> float:
    """The PSI two samples of these sizes show by chance alone, at ``confidence``.

    n * PSI (the symmetric Kullback-Leibler divergence) is asymptotically chi-squared
    with bins - 1 degrees of freedom, with 1/n = 1/day + 1/reference for two samples.
    The quantile comes from scipy.special: importing scipy.stats costs a second per process.
    """
    from scipy.special import chdtri

    if bins < 2 or day_users <= 0 or reference_user_days <= 0:
        return 0.0
    return float(chdtri(bins - 1, 1.0 - confidence) * (1.0 / day_users + 1.0 / reference_user_days))


def _excess(value: float, bins: int, users: DayUsers, reference_user_days: int, confidence: float) -> float:
    return round(max(0.0, value - chance_psi(bins, users.active, reference_user_days, confidence)), 6)


def _constant_features(metadata: DayReference) -> set[str]:
    return set(metadata.get("constant_features") or ())


def _alert_check(counts: DriftCounts, metadata: DayReference, settings: MonitoringSettings,
                 users: DayUsers | None) -> tuple[AlertCheck, str | None]:
    """Alert volume against what the reference promises, and a warning when it is off.

    With a cross-fitted reference the unit is the user: users with an alert against the
    reference's share of user-days with one, and a warning needs the ratio outside the
    band *and* a Poisson deviation beyond ``confidence`` (a single busy user's burst is
    not a miscalibrated model). Older bundles compare event shares with the percentile.
    """
    band = (1.0 / (1.0 + settings.alert_rate_tolerance), 1.0 + settings.alert_rate_tolerance)
    expected_rate = 1.0 - float(metadata["percentile"]) / 100.0
    alert_rate = counts.alerts / counts.rows if counts.rows else 0.0
    ref_days = metadata.get("reference_user_days")
    if users is not None and ref_days:
        from scipy.special import ndtri

        expected = users.active * float(metadata["reference_alerted_user_days"]) / float(ref_days)
        ratio = users.alerted / expected if expected > 0 else float("nan")
        z = float(ndtri(0.5 + settings.confidence / 2.0))
        off = expected > 0 and not band[0] <= ratio <= band[1] and abs(users.alerted - expected) > z * expected ** 0.5
        by_users: AlertCheck = {
            "alerts_at_global_threshold": counts.alerts, "alert_rate": round(alert_rate, 6),
            "expected_alert_rate": round(expected_rate, 6), "alerted_users": users.alerted,
            "expected_alerted_users": round(expected, 3),
            "alert_rate_ratio": round(ratio, 4) if expected > 0 else None}
        message = (f"{users.alerted} users with an alert is {ratio:.2f}x the {expected:.1f} expected"
                   if off else None)
        return by_users, message
    ratio = alert_rate / expected_rate if expected_rate > 0 else float("nan")
    by_events: AlertCheck = {
        "alerts_at_global_threshold": counts.alerts, "alert_rate": round(alert_rate, 6),
        "expected_alert_rate": round(expected_rate, 6),
        "alert_rate_ratio": round(ratio, 4) if counts.rows else None}
    off = bool(counts.rows) and not band[0] <= ratio <= band[1]
    return by_events, (f"alert rate {alert_rate:.4f} is {ratio:.2f}x the expected {expected_rate:.4f}" if off else None)


def drift_report_from_counts(counts: DriftCounts, metadata: DayReference,
                             settings: MonitoringSettings, users: DayUsers | None = None) -> DriftReport:
    """Turn a day's merged bin counts into the report stored in the run manifest.

    Status: ``drift`` (retraining advised) when the model's output moved (score PSI >=
    psi_drift) *and* its inputs explain it (at least ``min_drifted_features`` features
    with PSI >= psi_drift); ``warn`` when only one side moved, the score PSI passed
    psi_warn or the alert volume left its band; else ``ok``. Requiring both sides keeps an
    ordinary Monday (a different user mix moves the scores a little, no feature much)
    or a feature the forest barely uses from calling for a retrain, while a real shift
    moves both. Without a score reference, features alone decide. Features in
    ``ignore_features`` (calendar features that differ per day by design) and features
    constant in the reference (the forest cannot use them) are reported but never
    counted. Days with fewer than ``min_rows`` events never reach ``drift``: their PSI
    is mostly noise.

    With a cross-fitted reference (``drift_reference``) and the day's ``users``, every
    PSI above is judged as its excess over chance (see the module doc); the raw PSI is
    reported beside it.
    """
    reference = _feature_bins(metadata)
    feature_psi = {name: round(psi(c, reference[name]["proportions"]), 6)
                   for name, c in sorted(counts.feature_counts.items())}
    score_ref = score_reference(metadata)
    score_psi = (round(psi(counts.score_counts, score_ref[1]), 6)
                 if score_ref is not None and counts.score_counts is not None else None)
    ref_days = int(metadata.get("reference_user_days") or 0)
    chance_users = users if ref_days > 0 else None  # the excess over chance needs both sample sizes
    judged_by_excess = chance_users is not None
    if chance_users is not None:
        feature_judged = {name: _excess(v, len(reference[name]["proportions"]), chance_users, ref_days,
                                        settings.confidence)
                          for name, v in feature_psi.items()}
        score_judged = (None if score_psi is None or score_ref is None else
                        _excess(score_psi, len(score_ref[1]), chance_users, ref_days, settings.confidence))
    else:
        feature_judged, score_judged = feature_psi, score_psi
    unused = _constant_features(metadata)
    counted = {k: v for k, v in feature_judged.items() if k not in settings.ignore_features and k not in unused}
    max_feature, max_psi = max(counted.items(), key=lambda kv: (kv[1], feature_psi[kv[0]]), default=(None, 0.0))
    shifted = [(k, v) for k, v in sorted(counted.items(), key=lambda kv: -kv[1]) if v >= settings.psi_drift]
    label = "excess PSI" if judged_by_excess else "PSI"
    why = [f"feature {name} {label} {value:.3f} >= {settings.psi_drift:g}" for name, value in shifted]
    score_shifted = score_judged is not None and score_judged >= settings.psi_drift
    if score_shifted:
        why.insert(0, f"anomaly score {label} {score_judged:.3f} >= {settings.psi_drift:g}")
    warnings: list[str] = []
    inputs_shifted = len(shifted) >= settings.min_drifted_features
    if inputs_shifted and (score_shifted or score_judged is None):
        status = "drift"
    elif shifted or (score_judged or 0.0) >= settings.psi_warn:
        status = "warn"
        warnings += why or [f"anomaly score {label} {score_judged:.3f} >= {settings.psi_warn:g}"]
        why = []
    else:
        status, why = "ok", []
    alert_fields, alert_warning = _alert_check(counts, metadata, settings, chance_users)
    if alert_warning:
        status = _worst(status, "warn")
        warnings.append(alert_warning)
    if status == "drift" and counts.rows < settings.min_rows:
        status = "warn"
        warnings += why + [f"only {counts.rows} scored events (< monitoring.min_rows {settings.min_rows}): "
                           "PSI too noisy to call drift"]
        why = []
    judgement: DriftJudgement = {
        "judged_by": "excess" if judged_by_excess else "psi",
        "limits": {"psi_warn": settings.psi_warn, "psi_drift": settings.psi_drift,
                   "min_drifted_features": settings.min_drifted_features,
                   "alert_rate_band": [round(1.0 / (1.0 + settings.alert_rate_tolerance), 4),
                                       round(1.0 + settings.alert_rate_tolerance, 4)]},
    }
    if chance_users is not None:
        judgement["feature_psi_excess"] = feature_judged
        judgement["max_feature_psi_excess"] = round(max_psi, 6)
        judgement["score_psi_excess"] = score_judged
        judgement["chance"] = {"users": chance_users.active, "reference_user_days": ref_days,
                               "confidence": settings.confidence}
    return {
        "status": status,
        "retrain_advised": status == "drift",
        "why": why,
        "warnings": warnings,
        "rows": counts.rows,
        "feature_psi": feature_psi,
        "ignored_features": [f for f in settings.ignore_features if f in feature_psi],
        "unused_features": sorted(f for f in unused if f in feature_psi),
        "max_feature_psi": round(max((feature_psi[k] for k in counted), default=0.0), 6),
        "max_feature": max_feature,
        "score_psi": score_psi,
        **alert_fields,
        **judgement,
    }


# --- over time: one row per scored day, from the run manifests ---------------------


class MonitoringRow(TypedDict):
    """One scored day as `monitor`, its chart and the daily report show it."""

    date: str | None
    model_version: str | None
    scored: int
    flagged: int
    suppressed: int
    alerts: int
    alert_rate: float | None
    expected_alert_rate: float | None
    max_feature_psi: float | None
    max_feature: str | None
    score_psi: float | None
    judged_by: str | None
    feature_judged: float | None
    score_judged: float | None
    alerted_users: int | None
    expected_alerted_users: float | None
    alert_band: list[float] | None
    status: str
    retrain_advised: bool
    why: list[str]
    flagged_users: int


def monitoring_row(manifest: RunManifest) -> MonitoringRow:
    """What `monitor` and the daily report show for one run, from its manifest.

    Runs scored before drift checks existed have no ``drift`` section; their PSI
    columns are None rather than a made-up zero.
    """
    counts = manifest.get("counts", {})
    alerts = manifest.get("alerts", {})
    drift = manifest.get("drift", {})
    model = manifest.get("model", {})
    scored = int(counts.get("scored_rows", 0))
    flagged = int(alerts.get("flagged_rows", counts.get("flagged_rows", 0)))
    suppressed = int(alerts.get("suppressed_rows", 0))
    percentile = model.get("threshold_percentile")
    expected_rate = drift.get("expected_alert_rate")
    if expected_rate is None and percentile is not None:
        expected_rate = 1.0 - float(percentile) / 100.0
    return {
        "date": manifest.get("event_date"),
        "model_version": model.get("version"),
        "scored": scored,
        "flagged": flagged,
        "suppressed": suppressed,
        "alerts": int(alerts.get("alert_rows", flagged - suppressed)),
        "alert_rate": (drift.get("alert_rate") if drift else (flagged / scored if scored else None)),
        "expected_alert_rate": expected_rate,
        "max_feature_psi": drift.get("max_feature_psi"),
        "max_feature": drift.get("max_feature"),
        "score_psi": drift.get("score_psi"),
        # what the verdict compared with the limits: the excess over chance when the run
        # had a cross-fitted reference, else the raw PSI
        "judged_by": drift.get("judged_by", "psi") if drift else None,
        "feature_judged": drift.get("max_feature_psi_excess", drift.get("max_feature_psi")),
        "score_judged": drift.get("score_psi_excess", drift.get("score_psi")),
        "alerted_users": drift.get("alerted_users"),
        "expected_alerted_users": drift.get("expected_alerted_users"),
        "alert_band": _alert_band(drift.get("limits")),
        "status": drift.get("status", "n/a"),
        "retrain_advised": bool(drift.get("retrain_advised", False)),
        "why": list(drift.get("why", [])),
        "flagged_users": int(manifest.get("user_day", {}).get("flagged_users", 0)),
    }


def _alert_band(limits: DriftLimits | None) -> list[float] | None:
    """The alert-rate band the run was judged with; none when its drift section has no limits."""
    return limits.get("alert_rate_band") if limits else None


def retrain_advice(rows: Sequence[MonitoringRow]) -> str | None:
    """One sentence saying whether and why to retrain, or None when nothing calls for it.

    Retraining is advised when any day in the range drifted; the latest drifted day and
    its strongest reason are named so the operator knows where to look.
    """
    drifted = [r for r in rows if r.get("retrain_advised")]
    if not drifted:
        return None
    latest = drifted[-1]
    reason = latest["why"][0] if latest.get("why") else "drift"
    return (f"retraining advised: {len(drifted)} of {len(rows)} days drifted "
            f"(first {drifted[0]['date']}, latest {latest['date']}: {reason})")


# --- weekly seasonality: one reference per weekday -----------------------------------

WEEKDAY_REFERENCE_KEY: Final = "drift_reference_by_weekday"
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def weekday_references(X: np.ndarray, scores: np.ndarray, days: Sequence[date],
                       feature_names: Sequence[str], min_rows: int, min_days: int) -> dict[str, WeekdayReference]:
    """Training reference per weekday (0 = Monday) for weekdays with at least ``min_days``
    training days and ``min_rows`` events (``days`` holds each row's UTC date).

    Office users make Mondays and Saturdays look different from the pooled training
    window every single week; comparing a Saturday with the training Saturdays keeps
    that rhythm from reading as drift. One day alone is too noisy a reference, hence
    ``min_days``. Same summaries as the pooled ones (``uba.model.bundle.feature_reference``
    / ``score_summary``), so the PSI code is shared.
    """
    X = np.asarray(X, dtype=np.float64)
    days = list(days)
    weekdays = np.array([d.weekday() for d in days])
    out: dict[str, WeekdayReference] = {}
    for weekday in range(7):
        mask = weekdays == weekday
        n_days = len({d for d, keep in zip(days, mask, strict=True) if keep})
        if int(mask.sum()) >= min_rows and n_days >= min_days:
            out[str(weekday)] = {"rows": int(mask.sum()), "days": n_days,
                                 "feature_reference": feature_reference(X[mask], feature_names),
                                 "score_summary": score_summary(np.asarray(scores)[mask])}
    return out


def reference_for_weekday(metadata: BundleMetadata, weekday: int) -> tuple[DayReference, str]:
    """The bundle metadata with the reference to compare a day of ``weekday`` with, and its name.

    Prefers the cross-fitted ``drift_reference`` (its weekday, else its pooled part);
    older bundles use their per-weekday reference, then the pooled training reference.
    """
    cross_fitted = metadata.get(DRIFT_REFERENCE_KEY)
    if cross_fitted:
        own = (cross_fitted.get("weekdays") or {}).get(str(weekday))
        part = own or cross_fitted["pooled"]
        name = (f"training {WEEKDAY_NAMES[weekday]}s" if own else "training window") + \
            f" ({cross_fitted['scores']} scores, {part['days']} days, {part['user_days']} user-days)"
        return ({**metadata, "feature_reference": part["feature_reference"],
                 "score_reference": part["score_reference"], "reference_user_days": part["user_days"],
                 "reference_alerted_user_days": part["alerted_user_days"],
                 "constant_features": cross_fitted.get("constant_features", [])}, name)
    # an older bundle: none of the cross-fitted fields (CrossFittedFields() adds no key)
    older = (metadata.get(WEEKDAY_REFERENCE_KEY) or {}).get(str(weekday))
    if not older:
        return {**metadata, **CrossFittedFields()}, "pooled training window"
    return ({**metadata, **CrossFittedFields(), "feature_reference": older["feature_reference"],
             "score_reference": None, "score_summary": older["score_summary"]},
            f"training {WEEKDAY_NAMES[weekday]}s ({older['days']} days, {older['rows']} events)")


# --- the cross-fitted reference (see the module doc) ---------------------------------


@dataclass(frozen=True)
class TrainingRows:
    """What the reference needs to know about each training row besides its features."""

    days: np.ndarray  # datetime64[D], the row's UTC date
    users: np.ndarray  # user ids
    history_days: np.ndarray  # days of history behind the row's baseline


def cross_fitted_scores(X: np.ndarray, days: np.ndarray, feature_names: Sequence[str], model: ModelSettings,
                        percentile: float) -> tuple[np.ndarray, str]:
    """Each row scored by a forest that never saw its day: two forests, each fitted on
    alternate days of the window. A one-day window cannot be split and keeps its own
    (in-sample) scores, and says so.
    """
    order = np.unique(days)
    if order.size < 2:
        detector, scores = fit_detector(X, feature_names, model, percentile)
        return scores, "in-sample"
    fold = np.searchsorted(order, days) % 2
    scores = np.empty(X.shape[0], dtype=np.float64)
    for k in (0, 1):
        detector, _ = fit_detector(X[fold != k], feature_names, model, percentile)
        scores[fold == k] = detector.anomaly_scores(X[fold == k])
    return scores, "cross-fitted"


def _reference_part(X: np.ndarray, scores: np.ndarray, rows: TrainingRows, mask: np.ndarray, threshold: float,
                    feature_names: Sequence[str]) -> ReferencePart:
    cuts = [float(c) for c in np.unique(np.quantile(scores[mask], REFERENCE_SCORE_LEVELS))]
    user_days = {(d, u) for d, u in zip(rows.days[mask].tolist(), rows.users[mask].tolist(), strict=True)}
    alerted = mask & (scores >= threshold)
    alerted_days = {(d, u) for d, u in zip(rows.days[alerted].tolist(), rows.users[alerted].tolist(), strict=True)}
    return {"rows": int(mask.sum()), "days": int(np.unique(rows.days[mask]).size), "user_days": len(user_days),
            "alerted_user_days": len(alerted_days),
            "feature_reference": feature_reference(X[mask], feature_names),
            "score_reference": {"cuts": cuts,
                                "proportions": [float(p) for p in bin_proportions(scores[mask], cuts)]}}


def build_drift_reference(X: np.ndarray, scores: np.ndarray, scores_kind: str, rows: TrainingRows,
                          threshold: float, feature_names: Sequence[str],
                          settings: MonitoringSettings) -> DriftReference:
    """The reference clean days are compared with: mature rows, cross-fitted scores, pooled
    and per weekday (weekdays with ``weekday_reference_min_days`` days and ``min_rows``
    rows). When too few rows are mature (a window shorter than the warm-up), all rows
    are used and the reference says so.
    """
    X = np.asarray(X, dtype=np.float64)
    mature = np.asarray(rows.history_days) >= settings.reference_min_history_days
    warm_up_kept = int(mature.sum()) < settings.min_rows
    if warm_up_kept:
        mature = np.ones(X.shape[0], dtype=bool)
    pooled = _reference_part(X, scores, rows, mature, threshold, feature_names)
    weekdays = (rows.days.astype("datetime64[D]").view("int64") + 3) % 7  # 1970-01-01 was a Thursday
    per_weekday: dict[str, ReferencePart] = {}
    for weekday in range(7):
        mask = mature & (weekdays == weekday)
        if int(mask.sum()) >= settings.min_rows and \
                np.unique(rows.days[mask]).size >= settings.weekday_reference_min_days:
            per_weekday[str(weekday)] = _reference_part(X, scores, rows, mask, threshold, feature_names)
    constant = sorted(name for name, ref in pooled["feature_reference"]["features"].items()
                      if max(ref["proportions"]) >= 1.0)
    return {"version": 2, "scores": scores_kind, "min_history_days": settings.reference_min_history_days,
            "warm_up_rows_included": warm_up_kept, "constant_features": constant,
            "pooled": pooled, "weekdays": per_weekday}


# --- the verdict a score run reports ------------------------------------------------

DRIFT_EXIT_CODE = 3


def drift_verdict(manifest: RunManifest, settings: Settings) -> tuple[str, int]:
    """One line about the run's drift check, and the exit code the command should use.

    Heavy drift is reported but the outputs are published and the exit code stays 0,
    unless ``monitoring.fail_on_drift`` asks the scheduler to notice (exit 3).
    """
    drift = manifest.get("drift", {})
    alerts = manifest.get("alerts", {})
    status = drift.get("status", "n/a")
    line = (f"drift: {status} (max feature PSI {drift.get('max_feature_psi', 0):.3f}, score PSI "
            f"{drift.get('score_psi') or 0:.3f}); alerts {alerts.get('alert_rows', '?')}, "
            f"suppressed {alerts.get('suppressed_rows', 0)}, "
            f"unusual user-days {manifest.get('user_day', {}).get('flagged_users', 0)}")
    if status == "drift":
        line += f"; retraining advised: {'; '.join(drift.get('why', [])[:2])}"
        if settings.monitoring.fail_on_drift:
            return line + " (monitoring.fail_on_drift: exit 3)", DRIFT_EXIT_CODE
    return line, 0
