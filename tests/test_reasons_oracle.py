"""Reasons built from arrays and plain Python say what the former Polars expressions said.

``uba.features.reasons`` ranks and phrases reasons once for the API (one event) and the batch job
(flagged rows of a shard). These tests compare its ``explain`` with the frozen
expressions (``tests/polars_reasons_reference.py``) on every event of a generated day,
on edge cases of that day, and on random context values that exercise every rounding
branch of the numbers in the sentences.
"""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import polars_reasons_reference as reference
import pytest
from test_features_compiled import twisted
from test_reasons import ORDINARY
from worlds import SCORE_DAY, World

from uba import io
from uba.features import POPULATION_USER
from uba.features.events import event_features
from uba.features.reasons import explain


@pytest.fixture(scope="module")
def day(serving_world: World) -> tuple[pl.DataFrame, pl.DataFrame]:
    snapshot = io.latest_baseline_snapshot(serving_world.data_dir)
    assert snapshot is not None
    return io.scan_events(serving_world.data_dir, SCORE_DAY).collect(), io.read_baseline_snapshot(snapshot[1])


def assert_same_reasons(features: pl.DataFrame, max_reasons: int = 3) -> None:
    """Where the session's length given its actions (``uba-features-7``) is no stronger
    than its length alone, the reasons are the frozen expressions' to the byte (the new
    comparison is checked by hand in ``test_reasons``)."""
    if "length_for_actions_z" in features.columns:
        features = features.with_columns(
            length_for_actions_z=pl.min_horizontal("length_for_actions_z", "session_length_z"))
    old = reference.explain(features, max_reasons).collect()
    new = explain(features, max_reasons).collect()
    assert new["reason_kinds"].to_list() == old["reason_kinds"].to_list()
    assert new["reasons"].to_list() == old["reasons"].to_list()
    assert any(new["reasons"].to_list())  # not vacuous


def test_every_event_of_a_day_and_its_edge_cases(day) -> None:
    events, snapshot = day
    population_only = snapshot.filter(pl.col("user_id") == POPULATION_USER)
    for frame, base in ((events, snapshot), (twisted(events), snapshot), (events, population_only)):
        assert_same_reasons(event_features(frame.lazy(), base.lazy()).collect())


def test_random_context_values_round_as_before() -> None:
    rng = random.Random(7)

    def number(scale: float) -> float | None:
        return None if rng.random() < 0.05 else rng.choice([rng.uniform(0, scale), round(rng.uniform(0, 20) * 2) / 20])

    rows = []
    for _ in range(3000):
        rows.append({
            **ORDINARY,
            "known_user": rng.random() < 0.7, "event_type": rng.choice(["view", "download", "login"]),
            "device_type": rng.choice(["desktop", "mobile"]), "event_hour": float(rng.randint(0, 23)),
            "event_weekday": float(rng.randint(0, 6)), "session_duration_sec": rng.uniform(0, 40000),
            "events_in_session": rng.randint(1, 900), "global_by_actions": rng.random() < 0.5,
            "user_median_session_sec": number(8000), "user_median_actions": number(60),
            "user_usual_hour_start": rng.choice([None, *range(24)]), "user_usual_hour_end": rng.randint(0, 23),
            "user_device_share": number(1), "user_event_type_share": number(0.02),
            "user_download_share": number(0.2), "user_weekday_share": number(1),
            **{k: rng.uniform(0, 8) for k in ("hour_z", "hour_rarity", "session_length_z", "actions_z",
                                              "device_rarity_nats", "event_type_rarity_nats",
                                              "download_surprise", "weekday_rarity", "global_extremity")},
        })
    frame = pl.DataFrame(rows, infer_schema_length=None)
    assert_same_reasons(frame, max_reasons=8)
    assert np.isfinite(frame["hour_z"].to_numpy()).all()
