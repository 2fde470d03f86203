"""A /predict server the way a team following the seed write-up would build it: the
baseline of the API latency targets over HTTP (``api_latency.py`` runs it next to ``uba-api``).

The seed (../shared/seed/original-system.txt) describes a FastAPI inference service:
``POST /predict`` takes one event, engineers event-level and user-level features,
applies the StandardScaler and the Isolation Forest, compares the score with a
percentile threshold calibrated offline, and answers
``{"anomaly_score", "is_anomaly", "threshold_percentile"}``. This server does exactly
that, per request, with the seed's tools:

- at start: the model written by ``seed_style_score.py --fit`` (StandardScaler +
  scikit-learn IsolationForest, 200 trees, contamination 2%, threshold ``-offset_``,
  fitted on the seed features of the same training window the product's bundle was
  trained on, with the bundle's seed) and the per-user statistics (mean and spread of
  the session duration, mean actions, mean hour) computed with pandas from the raw
  events of the lookback window before ``--date``, as ``seed_style_score.py --run`` does;
- per request: a one-row pandas DataFrame from the body, the seed's features by
  ``seed_style_score.seed_features`` (merge with the user statistics, category codes,
  deviations), ``scaler.transform`` and ``IsolationForest.score_samples`` on that row,
  the threshold compare, a JSON answer.

Nothing is cached per user or per request beyond what the seed keeps in memory (the
model and the user statistics). One uvicorn worker, no access log, 127.0.0.1 only.
The seed's payload carries ``hour_of_day`` and ``day_of_week``; when a body has only a
``timestamp`` they are taken from it (UTC).

    python benchmarks/seed_style_api.py --data-dir DATA --date 2026-03-23 --model seed.pkl --port 8011
"""

from __future__ import annotations

import argparse
import pickle
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_style_score import read_days, seed_features, user_stats  # noqa: E402


class Event(BaseModel):
    """The seed's payload (extra fields such as ``event_id`` are ignored)."""

    user_id: int | str
    event_type: str
    session_duration_sec: float
    events_in_session: int
    hour_of_day: int | None = None
    day_of_week: int | None = None
    device_type: str
    timestamp: datetime | None = None


def create_app(data_dir: Path, as_of: date, model_path: Path, lookback_days: int) -> FastAPI:
    with open(model_path, "rb") as handle:
        model = pickle.load(handle)
    lookback = [as_of - timedelta(days=i) for i in range(lookback_days, 0, -1)]
    history = read_days(data_dir, lookback, ["user_id", "session_duration_sec", "events_in_session",
                                             "hour_of_day"])
    stats = user_stats(history)
    defaults = stats.mean().to_dict()
    del history
    scaler, forest, threshold = model["scaler"], model["forest"], model["threshold"]
    app = FastAPI(title="seed-style UBA API")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(event: Event) -> dict[str, Any]:
        row = event.model_dump()
        stamp = row.pop("timestamp")
        if stamp is not None:
            stamp = stamp.astimezone(UTC) if stamp.tzinfo else stamp
            row["hour_of_day"] = stamp.hour if row["hour_of_day"] is None else row["hour_of_day"]
            row["day_of_week"] = stamp.weekday() if row["day_of_week"] is None else row["day_of_week"]
        row["user_id"] = str(row["user_id"])
        frame = pd.DataFrame([row])
        features = seed_features(frame, stats, defaults, model["event_types"], model["devices"])
        X = scaler.transform(features.to_numpy(dtype=np.float64))
        score = float(-forest.score_samples(X)[0])
        return {"anomaly_score": score, "is_anomaly": bool(score >= threshold), "threshold_percentile": 0.98}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--date", type=date.fromisoformat, required=True,
                        help="the day served: user statistics come from the days before it")
    parser.add_argument("--model", type=Path, required=True, help="pickle written by seed_style_score.py --fit")
    parser.add_argument("--lookback-days", type=int, default=28)
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    import uvicorn

    app = create_app(args.data_dir, args.date, args.model, args.lookback_days)
    uvicorn.run(app, host="127.0.0.1", port=args.port, workers=1, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
