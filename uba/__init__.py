"""UBA: user behaviour anomaly detection against each user's own baseline."""

__version__ = "0.1.0"
