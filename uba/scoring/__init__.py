"""Batch scoring of one day (``score --date``) and of a range of days (``backfill``).

Modules: ``driver`` runs a day end to end (staging, swap, manifest), ``plan`` splits the
day into shards from Parquet metadata, ``shard`` is one shard's whole per-row pipeline,
``ray_backend`` runs the shards on Ray or in this process (``ray_worker`` is what its
tasks run, ``context`` what they receive), ``outputs`` shapes the
published frames, ``hooks`` holds the run's cuts, rules and drift verdict, ``backfill``
walks a date range.

This package imports none of its modules: a Ray worker unpickling a task imports only
``ray_worker``, ``context`` and ``plan``, and the task imports the shard's own code after
capping Polars' threads (the driver and backfill cost about 0.2 s more per worker start,
paid by every run on a joined cluster). Import from the modules themselves.
"""
