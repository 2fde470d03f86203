"""Batch scoring of one day (``score --date``) and of a range of days (``backfill``).

Modules: ``driver`` runs a day end to end (staging, swap, manifest), ``ray_backend``
shards the model over Ray or runs it in-process, ``outputs`` shapes the published
frames, ``manifest`` reads and writes run records, ``lock`` keeps one run per date,
``backfill`` walks a date range. Importing this package does no work and does not
import Ray.
"""

from uba.features.pipeline import load_scoring_bundle
from uba.locks import RunLockedError
from uba.manifest import scored_with
from uba.scoring.backfill import BackfillOutcome, backfill_dates
from uba.scoring.driver import ScoreOptions, open_runtime, score_day
from uba.scoring.ray_backend import RunFailedError, ShardFailedError
from uba.scoring.shard import FaultInjection

__all__ = [
    "BackfillOutcome",
    "FaultInjection",
    "RunFailedError",
    "RunLockedError",
    "ScoreOptions",
    "ShardFailedError",
    "backfill_dates",
    "load_scoring_bundle",
    "open_runtime",
    "score_day",
    "scored_with",
]
