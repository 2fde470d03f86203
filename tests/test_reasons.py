"""Ranked plain-word reasons from hand-made feature rows (no model, no files)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from uba.features.reasons import MIN_SEVERITY, REASON_KINDS, explain

ORDINARY = {
    "known_user": True, "event_type": "view", "device_type": "desktop",
    "event_hour": 10.0, "event_weekday": 1.0,
    "session_duration_sec": 720.0, "events_in_session": 20,
    "hour_z": 0.0, "hour_rarity": 0.0, "session_length_z": 0.0, "length_for_actions_z": 0.0, "actions_z": 0.0,
    "device_rarity_nats": 0.0, "event_type_rarity_nats": 0.0, "download_surprise": 0.0,
    "weekday_rarity": 0.0, "global_extremity": 0.0, "global_by_actions": False,
    "user_median_session_sec": 720.0, "user_median_actions": 20.0,
    "user_expected_log_session": 6.580639137284949,  # log1p(720): 12 min for 20 actions
    "user_expected_for_log_actions": None,  # unknown: read at the session's own actions
    "user_usual_hour_start": 9, "user_usual_hour_end": 17,
    "user_device_share": 0.9, "user_event_type_share": 0.6, "user_download_share": 0.05,
    "user_weekday_share": 0.2,
}


def reasons_of(*changes: dict, max_reasons: int = 3) -> list[tuple[list[str], list[str]]]:
    frame = pl.DataFrame([{**ORDINARY, **c} for c in changes]).lazy()
    out = explain(frame, max_reasons=max_reasons)
    assert isinstance(out, pl.LazyFrame)  # expression-only: the API applies it to its own row
    df = out.collect()
    assert df.schema["reasons"] == pl.List(pl.String) == df.schema["reason_kinds"]
    return list(zip(df["reasons"].to_list(), df["reason_kinds"].to_list(), strict=True))


def test_reasons_are_ranked_by_severity_with_parallel_kinds():
    [(texts, kinds)] = reasons_of({
        "hour_z": 5.0, "event_hour": 3.0, "session_length_z": 3.0, "session_duration_sec": 6552.0,
        "device_rarity_nats": 8.0, "device_type": "mobile", "user_device_share": 0.0,
    })
    assert kinds == ["hour", "device", "session_length"]  # 5 > sqrt(2*8)=4 > 3
    assert texts == [
        "03:00 is outside this user's usual 09:00-17:00",
        "first mobile use for this user",
        "session 9.1x longer than this user's median (12 min)",
    ]


def test_a_session_long_for_its_actions_is_told_once_by_the_stronger_comparison():
    """Only somewhat longer than the user's median, but much longer than their sessions
    with as few actions: one session_length reason, phrased against the activity; a busy
    long session (long for the user, ordinary for its actions) keeps the median phrasing."""
    slow, busy, missing = reasons_of(
        {"session_length_z": 1.5, "length_for_actions_z": 3.5, "session_duration_sec": 1800.0,
         "events_in_session": 6, "user_expected_log_session": math.log1p(300.0)},
        {"session_length_z": 3.0, "length_for_actions_z": 0.2, "session_duration_sec": 3600.0,
         "events_in_session": 80},
        {"session_length_z": 1.5, "length_for_actions_z": 3.5, "user_expected_log_session": None},
    )
    assert slow == (["session 6.0x longer than this user's usual for 6 actions (5 min)"], ["session_length"])
    assert busy[1] == ["session_length"] and busy[0] == ["session 5.0x longer than this user's median (12 min)"]
    assert missing == (["session length"], ["session_length"])  # no expected length: the kind's name



def test_a_one_action_session_long_for_its_actions_says_action_not_actions():
    (texts, kinds), = reasons_of(
        {"session_length_z": 1.5, "length_for_actions_z": 3.5, "session_duration_sec": 600.0,
         "events_in_session": 1, "user_expected_log_session": math.log1p(60.0)},
    )
    assert texts == ["session 10.0x longer than this user's usual for 1 action (60 s)"]
    assert kinds == ["session_length"]


def test_a_session_outside_the_users_usual_actions_names_the_edge_it_is_compared_with():
    """The expected length of a session with fewer (more) actions than the user usually
    takes is their line at the edge of their usual actions: the reason names the edge's
    count, not the session's own, whose usual length nobody knows."""
    few, many, own = reasons_of(
        {"session_length_z": 1.5, "length_for_actions_z": 3.5, "session_duration_sec": 2400.0,
         "events_in_session": 1, "user_expected_log_session": math.log1p(240.0),
         "user_expected_for_log_actions": math.log1p(8.0)},
        {"session_length_z": 1.5, "length_for_actions_z": 3.5, "session_duration_sec": 60.0, "known_user": False,
         "events_in_session": 4000, "user_expected_log_session": math.log1p(5.0),
         "user_expected_for_log_actions": math.log1p(300.0)},
        {"session_length_z": 1.5, "length_for_actions_z": 3.5, "session_duration_sec": 600.0,
         "events_in_session": 6, "user_expected_log_session": math.log1p(60.0),
         "user_expected_for_log_actions": math.log1p(6.0)},
    )
    assert few[0] == ["session 10x longer than this user's usual for 8 actions (4 min); "
                      "it had 1, fewer than they usually take"]
    assert many[0] == ["session 12x longer than most users' usual for 300 actions (5 s); "
                       "it had 4000, more than they usually take"]
    assert own[0] == ["session 10.0x longer than this user's usual for 6 actions (60 s)"]

def test_max_reasons_keeps_the_strongest():
    [(texts, kinds)] = reasons_of({"hour_z": 5.0, "session_length_z": 3.0}, max_reasons=1)
    assert kinds == ["hour"] and len(texts) == 1


def test_ordinary_and_weak_events():
    ordinary, weak, faint, two = reasons_of(
        {},
        {"actions_z": 1.5, "events_in_session": 35},
        {"actions_z": 0.9},
        {"actions_z": 1.5, "session_length_z": 2.5},
    )
    assert ordinary == ([], [])
    assert weak == (["35 actions in the session, 1.8x this user's median (20)"], ["actions"])
    assert faint == ([], [])  # under one sigma: nothing worth saying
    assert two[1] == ["session_length"]  # a second reason needs MIN_SEVERITY
    assert MIN_SEVERITY == 2.0


def test_ties_keep_the_documented_kind_order():
    [(_, kinds)] = reasons_of({"hour_z": 3.0, "session_length_z": 3.0, "actions_z": 3.0})
    assert kinds == ["hour", "session_length", "actions"]
    assert list(REASON_KINDS[:3]) == kinds


def test_hour_texts_handle_windows_across_midnight_and_rare_hours_inside():
    outside, inside = reasons_of(
        {"hour_z": 4.0, "event_hour": 12.0, "user_usual_hour_start": 22, "user_usual_hour_end": 6},
        {"hour_rarity": 3.0, "event_hour": 23.0, "user_usual_hour_start": 22, "user_usual_hour_end": 6},
    )
    assert outside[0] == ["12:00 is outside this user's usual 22:00-06:00"]
    assert inside[0] == ["23:00 is a rare hour for this user (usual hours 22:00-06:00)"]


def test_device_event_type_and_weekday_texts_quote_the_users_share():
    rare_device, rare_type, new_type, weekend = reasons_of(
        {"device_rarity_nats": 4.0, "device_type": "mobile", "user_device_share": 0.03},
        {"event_type_rarity_nats": 4.0, "event_type": "logout", "user_event_type_share": 0.004},
        {"event_type_rarity_nats": 4.0, "event_type": "click", "user_event_type_share": 0.0},
        {"weekday_rarity": 3.0, "event_weekday": 5.0, "user_weekday_share": 0.01},
    )
    assert rare_device == (["mobile is rare for this user (3% of events)"], ["device"])
    assert rare_type == (["logout events are rare for this user (0.4% of events)"], ["event_type"])
    assert new_type == (["first click event for this user"], ["event_type"])
    assert weekend == (["Saturday activity is rare for this user (1% of events)"], ["time_of_week"])


def test_downloads_are_told_once_with_the_session_size_when_it_matters():
    big, first = reasons_of(
        {"event_type": "download", "download_surprise": 12.0, "event_type_rarity_nats": 4.0,
         "user_download_share": 0.02, "user_event_type_share": 0.02, "actions_z": 4.0,
         "events_in_session": 120},
        {"event_type": "download", "download_surprise": 4.5, "event_type_rarity_nats": 4.5,
         "user_download_share": 0.0, "user_event_type_share": 0.0},
    )
    assert big[1] == ["download_intensity", "actions"]  # never also "event_type"
    assert big[0][0] == "downloads are rare for this user (2% of events), in a session of 120 actions (6.0x usual)"
    assert first == (["first download for this user"], ["download_intensity"])


def test_unknown_users_are_compared_with_most_users():
    [(texts, _)] = reasons_of({"known_user": False, "session_length_z": 3.0, "session_duration_sec": 2160.0,
                               "user_device_share": 0.0, "device_rarity_nats": 0.0})
    assert texts == ["session 3.0x longer than most users' median (12 min)"]


def test_global_extremes_name_the_extreme_field():
    by_length, by_actions = reasons_of(
        {"global_extremity": 6.0, "session_duration_sec": 90000.0},
        {"global_extremity": 6.0, "global_by_actions": True, "events_in_session": 5000},
    )
    assert by_length == (["a 25.0 h session is extreme for any user"], ["global"])
    assert by_actions == (["5000 actions in one session is extreme for any user"], ["global"])


@pytest.mark.parametrize("missing", ["user_median_session_sec", "user_usual_hour_start"])
def test_missing_context_still_gives_a_reason(missing):
    [(texts, kinds)] = reasons_of({"session_length_z": 3.0, "hour_z": 2.5, missing: None})
    assert kinds == ["session_length", "hour"]
    assert all(isinstance(t, str) and t for t in texts)


def _ranked_by_hand(row: list[float], max_reasons: int) -> list[str]:
    """The documented rule, written out one row at a time."""
    from uba.features.reasons import MIN_SEVERITY, MIN_TOP_SEVERITY, REASON_KINDS

    ranked = sorted(zip(REASON_KINDS, row, strict=True), key=lambda kv: -kv[1])  # sorted() is stable
    top = ranked[0][1]
    if top < MIN_TOP_SEVERITY:
        return []
    keep_from = max(min(top, MIN_SEVERITY), MIN_TOP_SEVERITY)
    return [kind for kind, sev in ranked if sev >= keep_from][:max_reasons]


@pytest.mark.parametrize("max_reasons", [0, 1, 3, 8])
def test_kind_ranking_follows_the_documented_rule_with_ties(max_reasons: int) -> None:
    import numpy as np

    from uba.features.reasons import reason_kinds_column

    rng = np.random.default_rng(max_reasons)
    severity = rng.choice([0.0, 0.5, 0.99, 1.0, 1.5, 1.99, 2.0, 2.5, 3.0], size=(3000, 8))
    severity[:1000] *= 0.4  # rows whose strongest kind stays under MIN_TOP_SEVERITY
    got = reason_kinds_column(severity, max_reasons).to_list()
    assert got == [_ranked_by_hand(list(row), max_reasons) for row in severity]
    assert max(len(k) for k in got) >= min(max_reasons, 3) and any(k == [] for k in got[:1000])


def _adversarial_severities(seed: int) -> np.ndarray:
    """Rows built to break a ranking: ties everywhere (at and around both cut-offs), NaN
    (one, several, all), signed zeros, infinities, negative values, and plain random ones."""
    from uba.features.reasons import MIN_TOP_SEVERITY

    rng = np.random.default_rng(seed)
    edges = [MIN_SEVERITY, MIN_TOP_SEVERITY, np.nextafter(MIN_SEVERITY, 0), np.nextafter(MIN_TOP_SEVERITY, 0),
             np.nextafter(MIN_SEVERITY, 9), 0.0, -0.0, -1.0, 3.0, np.inf, -np.inf, np.nan]
    severity = rng.choice(edges, size=(6000, len(REASON_KINDS)))
    severity[1000:2000] = rng.choice([MIN_SEVERITY, MIN_TOP_SEVERITY, 2.5], size=(1000, len(REASON_KINDS)))
    severity[2000:3000] = rng.normal(1.5, 1.5, size=(1000, len(REASON_KINDS)))
    severity[3000:3100] = np.nan
    severity[3100:3200] = MIN_SEVERITY  # a full tie at the cut-off: kinds in documented order
    severity[3200:3300] = MIN_TOP_SEVERITY
    return severity


@pytest.mark.parametrize("max_reasons", [-1, 0, 1, 2, 3, 7, 8, 9])
def test_the_compiled_ranking_lists_what_the_numpy_and_float_rankings_list(max_reasons: int) -> None:
    """The rule is written three times (numpy for /predict/batch, plain floats for /predict,
    numba for batch shards): all three list the same kinds in the same order, for any
    max_reasons and any severities, whatever the memory layout the kernel is given.
    ``listed_kinds`` is not given NaN: its input is a ``severity_row``, where a missing
    severity is already 0."""
    from uba.features.reasons import listed_kinds, reason_kinds, reason_kinds_column

    severity = _adversarial_severities(max_reasons + 10)
    numpy_kinds = reason_kinds(severity, max_reasons)
    assert reason_kinds_column(severity, max_reasons).to_list() == numpy_kinds
    assert reason_kinds_column(np.asfortranarray(severity), max_reasons).to_list() == numpy_kinds
    assert reason_kinds_column(np.ascontiguousarray(severity.T).T, max_reasons).to_list() == numpy_kinds
    finite = ~np.isnan(severity).any(axis=1)
    assert [listed_kinds(row, max_reasons) for row in severity[finite].tolist()] == [
        k for k, keep in zip(numpy_kinds, finite.tolist(), strict=True) if keep]
    counts = [len(k) for k in numpy_kinds]
    assert max(counts) == max(0, min(max_reasons, len(REASON_KINDS)))  # not vacuous
    if max_reasons > 0:
        assert numpy_kinds[3100] == list(REASON_KINDS[:max_reasons])
        assert numpy_kinds[3000] == []


def test_the_compiled_ranking_refuses_what_it_cannot_rank() -> None:
    """The loop reads without bounds checks: its wrapper refuses a shape or dtype it was not built for."""
    from uba.model.forest import compiled_kernel

    kernel = compiled_kernel()
    for bad in (np.zeros((3, 0)), np.zeros(8), np.zeros((3, 65)), np.zeros((3, 8), dtype=np.float32)):
        with pytest.raises(ValueError, match="ranked_kinds needs"):
            kernel.ranked_kinds(bad, 3, MIN_SEVERITY, 1.0)


def test_twin_events_share_sentences_and_no_row_gets_another_rows() -> None:
    """``phrase_frame`` phrases each distinct (inputs, kinds) once: every read row still gets
    exactly what ``sentences`` says of it alone. Rows with the same inputs but other kinds,
    inputs apart only by a share, NaN beside null beside a value, and twins far apart with
    an unread twin between them."""
    from uba.features.reasons import SENTENCE_INPUTS, sentences

    a = {"hour_z": 5.0, "event_hour": 3.0, "device_rarity_nats": 8.0, "device_type": "mobile",
         "user_device_share": 0.0, "read": True}
    long = {**a, "session_length_z": 3.0, "hour_z": 0.0}
    changes = [
        a, {**a, "hour_z": 0.0}, a, {**a, "read": False}, {**a, "user_device_share": 0.25},
        {**long, "user_median_session_sec": math.nan}, {**long, "user_median_session_sec": None},
        {**long, "user_median_session_sec": 60.0}, {**long, "user_median_session_sec": math.nan},
        {**a, "user_device_share": -0.0}, {**a, "hour_z": 0.0, "device_rarity_nats": 0.0}, a,
    ]
    frame = pl.DataFrame([{**ORDINARY, **c} for c in changes])
    out = explain(frame, sentences_for=pl.col("read")).collect()
    kinds = out["reason_kinds"].to_list()
    expected = [sentences(row, k) if row_read else None for row, k, row_read in
                zip(frame.select(SENTENCE_INPUTS).to_dicts(), kinds, frame["read"].to_list(), strict=True)]
    got = out["reasons"].to_list()
    assert got == expected
    assert got[0] == got[2] == got[11] != got[1] and got[3] is None and got[10] == []
    assert kinds[0] != kinds[1] and got[4] != got[0]
    assert got[5] == got[6] == got[8] != got[7]  # no median: the kind's name, NaN or null
