"""Alerts as analysts' tools expect them: one canonical record per finding
(``records``), rendered as OCSF, ECS, JSON Lines or CSV (``formats``)."""
