"""Per-user thresholds: the arithmetic on small hand-made frames (the end-to-end effect on
generated data with an erratic user is in test_operations_e2e.py)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from uba import io
from uba.alerting import thresholds
from uba.alerting.thresholds import (
    HISTORY_SCHEMA,
    decide,
    load_or_build_history,
    score_history,
    user_cut_array,
    user_thresholds,
)
from uba.errors import BundleError
from uba.features.baselines import POPULATION_USER
from uba.model import bundle as artifacts
from uba.monitoring.evaluation import concentration_comparison
from uba.settings import Settings, UserThresholdSettings

T = 0.6
SETTINGS = UserThresholdSettings(enabled=True, prior_events=50, user_quantile=0.9, min_ratio=0.9, max_ratio=1.3)


def _history(rows: list[tuple[str, int, float]]) -> pl.LazyFrame:
    return pl.LazyFrame(rows, schema={"user_id": pl.String, "n": pl.Int64, "user_quantile": pl.Float64},
                        orient="row")


def test_score_history_has_each_user_and_the_population() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.3, 0.5, 200), rng.uniform(0.5, 0.9, 50)
    scored = pl.LazyFrame({"user_id": ["a"] * 200 + ["b"] * 50, "anomaly_score": np.concatenate([a, b])})
    out = score_history(scored, 0.9).collect()
    by_user = {r["user_id"]: r for r in out.iter_rows(named=True)}
    assert set(by_user) == {"a", "b", POPULATION_USER}
    assert by_user["a"]["n"] == 200 and by_user[POPULATION_USER]["n"] == 250
    assert by_user["b"]["user_quantile"] == pytest.approx(np.quantile(b, 0.9))
    assert by_user[POPULATION_USER]["user_quantile"] == pytest.approx(np.quantile(np.concatenate([a, b]), 0.9))


def test_cut_moves_by_the_shrunk_excess_and_stays_within_bounds() -> None:
    history = _history([
        ("erratic", 150, 0.62),    # 0.12 above everyone, lots of history
        ("wild", 5000, 0.95),      # would be far above: clipped at 1.3 T
        ("newcomer", 2, 0.70),     # little history: stays near T
        ("regular", 150, 0.40),    # well below everyone: lowered, floored at 0.9 T
        ("average", 80, 0.50),
        (POPULATION_USER, 10_000, 0.50),
    ])
    cuts = {r["user_id"]: r for r in user_thresholds(history, T, SETTINGS).collect().iter_rows(named=True)}
    assert POPULATION_USER not in cuts
    assert cuts["erratic"]["weight"] == pytest.approx(150 / 200)
    assert cuts["erratic"]["user_threshold"] == pytest.approx(T + 0.75 * 0.12)
    assert cuts["wild"]["user_threshold"] == pytest.approx(1.3 * T)
    assert cuts["newcomer"]["user_threshold"] == pytest.approx(T + 2 / 52 * 0.20)
    assert cuts["regular"]["user_threshold"] == pytest.approx(0.9 * T)
    assert cuts["average"]["user_threshold"] == pytest.approx(T)


def test_decide_redecides_alerts_with_each_users_cut() -> None:
    cuts = user_thresholds(_history([("erratic", 150, 0.62), ("regular", 150, 0.40),
                                     (POPULATION_USER, 1000, 0.50)]), T, SETTINGS).collect()
    users = ["erratic", "regular", "stranger", "erratic"]
    decision = decide(np.array([0.65, 0.56, 0.61, 0.70]), user_cut_array(users, cuts, T), users,
                      [None] * 4, [])
    assert decision.is_anomaly.tolist() == [False, True, True, True]
    assert decision.cuts.tolist() == pytest.approx([0.69, 0.54, T, 0.69]), "unknown users get the global cut"
    assert decision.suppressed_by == [None] * 4


def test_concentration_with_and_without() -> None:
    users = ["noisy"] * 10 + [f"u{i}" for i in range(99)]
    scores = np.array([0.7] * 10 + [0.65] * 5 + [0.3] * 94)
    cuts = user_cut_array(users, pl.DataFrame({"user_id": ["noisy"], "user_threshold": [0.8]}), T)
    assert cuts[:10].tolist() == [0.8] * 10 and cuts[10:].tolist() == [T] * 99
    report = concentration_comparison(users, scores, T, cuts)
    assert report["global_threshold"]["alerts"] == 15
    assert report["global_threshold"]["max_alerts_one_user"] == 10
    assert report["per_user_thresholds"]["alerts"] == 5
    assert report["per_user_thresholds"]["max_alerts_one_user"] == 1
    assert (report["per_user_thresholds"]["top_1pct_share_of_alerts"]
            < report["global_threshold"]["top_1pct_share_of_alerts"])


# --- the stored table of a bundle is read with the bundle guards (hardening) ---

FORGED = pl.DataFrame({"user_id": ["u00001", POPULATION_USER], "n": [10_000, 10_000],
                       "user_quantile": [0.99, 0.1]}, schema=dict(HISTORY_SCHEMA))
REBUILT = pl.DataFrame({"user_id": ["u00001", POPULATION_USER], "n": [5, 5],
                        "user_quantile": [0.5, 0.5]}, schema=dict(HISTORY_SCHEMA))


@pytest.fixture
def stored_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """A bundle directory, a history rebuild that returns REBUILT, and the module's log captured."""
    bundle_dir = tmp_path / "models" / "20260322T010203Z-ab12cd34"
    bundle_dir.mkdir(parents=True)
    monkeypatch.setattr(thresholds, "history_from_training", lambda settings, bundle: REBUILT)
    logger = logging.getLogger("uba.thresholds")
    logger.addHandler(caplog.handler)
    yield SimpleNamespace(path=bundle_dir, version=bundle_dir.name), io.user_score_history_path(bundle_dir, 0.9)
    logger.removeHandler(caplog.handler)


def _load(bundle: SimpleNamespace) -> pl.DataFrame:
    return load_or_build_history(Settings(), bundle)  # type: ignore[arg-type]


def test_a_stored_table_is_used_as_it_is(stored_table) -> None:
    bundle, path = stored_table
    FORGED.write_parquet(path)
    assert _load(bundle).equals(FORGED)


def test_a_table_linked_from_outside_the_bundle_is_refused_and_rebuilt(
        stored_table, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: the link was followed and a forged table set every user's cut."""
    bundle, path = stored_table
    outside = tmp_path / "outside.parquet"
    FORGED.write_parquet(outside)
    path.symlink_to(outside)
    assert _load(bundle).equals(REBUILT)
    assert "leads outside" in caplog.text and path.name in caplog.text
    assert not path.is_symlink() and pl.read_parquet(path).equals(REBUILT)  # the link is replaced...
    assert pl.read_parquet(outside).equals(FORGED)  # ...and its target never written


@pytest.mark.timeout(20)
def test_a_fifo_in_place_of_the_table_does_not_hang(stored_table, caplog: pytest.LogCaptureFixture) -> None:
    bundle, path = stored_table
    os.mkfifo(path)
    assert _load(bundle).equals(REBUILT)
    assert stat.S_ISREG(os.lstat(path).st_mode)


@pytest.mark.timeout(20)
def test_a_link_to_a_fifo_inside_the_bundle_is_refused(stored_table, caplog: pytest.LogCaptureFixture) -> None:
    bundle, path = stored_table
    os.mkfifo(path.parent / "pipe")
    path.symlink_to("pipe")
    assert _load(bundle).equals(REBUILT)
    assert "is a FIFO" in caplog.text


@pytest.mark.parametrize("content", [b"root:x:0:0:SECRET-7f3a\n", b"PAR1" + b"SECRET-7f3a" * 100 + b"PAR1"])
def test_a_damaged_table_is_rebuilt_with_a_warning_that_quotes_nothing(
        stored_table, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    """Before: a UserError that carried the Parquet reader's message."""
    bundle, path = stored_table
    path.write_bytes(content)
    assert _load(bundle).equals(REBUILT)
    assert "not a readable Parquet table" in caplog.text and path.name in caplog.text
    assert "SECRET" not in caplog.text and "root:x" not in caplog.text


def test_a_table_with_other_columns_is_rebuilt(stored_table, caplog: pytest.LogCaptureFixture) -> None:
    bundle, path = stored_table
    pl.DataFrame({"user_id": ["u1"], "cut": [0.1]}).write_parquet(path)
    assert _load(bundle).equals(REBUILT)
    assert "columns are not user_id, n, user_quantile" in caplog.text


def test_a_table_over_the_size_cap_is_refused(stored_table, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    bundle, path = stored_table
    with open(path, "wb") as handle:
        handle.truncate(io.MAX_USER_HISTORY_BYTES + 1)  # sparse: no disk used
    assert _load(bundle).equals(REBUILT)
    assert f"over the {io.MAX_USER_HISTORY_BYTES}-byte limit" in caplog.text


def test_a_table_that_cannot_be_stored_is_used_for_the_run(stored_table, caplog: pytest.LogCaptureFixture) -> None:
    bundle, path = stored_table
    path.mkdir()  # a rename of a file over a directory fails
    assert _load(bundle).equals(REBUILT)
    assert "is a directory" in caplog.text and "using it for this run only" in caplog.text


def test_a_stored_table_is_read_with_the_bundle_guards(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="leads outside"):
        outside = tmp_path / "t.parquet"
        FORGED.write_parquet(outside)
        (tmp_path / "b").mkdir()
        io.user_score_history_path(tmp_path / "b", 0.9).symlink_to(outside)
        artifacts.read_user_score_history(tmp_path / "b", 0.9)
