"""Getting events in: the readers of CSV, JSON, JSON Lines and Parquet and the one event
writer (``files``), and the validation of raw rows (``validate``)."""
