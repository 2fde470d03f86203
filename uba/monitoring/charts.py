"""Charts of how the detector is doing, drawn the same way wherever they appear (the
``monitor`` command's drift chart, the report's drift section, the evaluation figures)."""

from __future__ import annotations

import io as stdio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib costs about a second to import; it is imported when a chart is drawn
    from matplotlib.figure import Figure

STATUS_COLOURS = {"ok": "#2e7d32", "warn": "#b26a00", "drift": "#c62828", "n/a": "#666666"}


def png_bytes(fig: Figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes without a timestamp, so the same data gives the same file."""
    import matplotlib.pyplot as plt

    buffer = stdio.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def file_backend() -> None:
    """Put matplotlib on its file-only backend before pyplot is imported (on first use: it
    costs about a second, and most commands never draw)."""
    import matplotlib

    matplotlib.use("Agg")


def _number(value: object) -> float:
    """A row's number, NaN where the run recorded none (a gap in the line)."""
    return float(value) if isinstance(value, int | float | str) else float("nan")


def _band(value: object) -> tuple[float, float]:
    """A row's alert band (low and high factor of the expected volume), NaN where it has none."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return _number(value[0]), _number(value[1])
    return float("nan"), float("nan")


def drift_history_png(rows: Sequence[Mapping[str, object]], psi_warn: float, psi_drift: float) -> bytes:
    """The verdict's own rule over time: the judged feature and score PSI (the excess over
    chance for runs with a cross-fitted reference) against the warn and drift lines, each
    day's verdict, and the alert volume against what the reference expects."""
    file_backend()
    import matplotlib.pyplot as plt

    fig, (ax_psi, ax_rate) = plt.subplots(2, 1, figsize=(10, 5.2), sharex=True)
    labels = [str(r["date"])[5:] for r in rows]

    def series(key: str) -> list[float]:
        return [_number(r.get(key)) for r in rows]

    excess = any(r.get("judged_by") == "excess" for r in rows)
    unit = "excess PSI" if excess else "PSI"
    ax_psi.plot(labels, series("feature_judged"), marker="o", label=f"max feature {unit}")
    ax_psi.plot(labels, series("score_judged"), marker="s", label=f"score {unit}")
    ax_psi.axhline(psi_warn, color=STATUS_COLOURS["warn"], linestyle=":", label=f"score warn {psi_warn:g}")
    ax_psi.axhline(psi_drift, color=STATUS_COLOURS["drift"], linestyle="--", label=f"drift {psi_drift:g}")
    for x, row in zip(labels, rows, strict=True):
        ax_psi.axvspan(labels.index(x) - 0.5, labels.index(x) + 0.5, alpha=0.18, linewidth=0,
                       color=STATUS_COLOURS.get(str(row.get("status")), "#9e9e9e"))
    ax_psi.set_ylabel(unit)
    ax_psi.set_title("drift = score and a feature at or above the drift line; warn = a feature at or above it, "
                     "the score above the warn line, or alert volume outside its band (shading: verdict)",
                     fontsize=7)
    ax_psi.legend(fontsize=7, loc="upper left")
    by_users = any(r.get("alerted_users") is not None for r in rows)
    observed, expected = (("alerted_users", "expected_alerted_users") if by_users
                          else ("alert_rate", "expected_alert_rate"))
    ax_rate.plot(labels, series(observed), marker="o", label="users with an alert" if by_users else "alert rate")
    ax_rate.plot(labels, series(expected), linestyle="--", color="#37474f", label="expected")
    bands = [_band(r.get("alert_band")) for r in rows]
    ax_rate.fill_between(labels, [e * b[0] for e, b in zip(series(expected), bands, strict=True)],
                         [e * b[1] for e, b in zip(series(expected), bands, strict=True)], color="#90a4ae",
                         alpha=0.25, label="band (warn outside it when beyond chance)" if by_users else "band")
    ax_rate.set_ylabel("users" if by_users else "alert rate")
    ax_rate.tick_params(axis="x", labelsize=7, rotation=45)
    ax_rate.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return png_bytes(fig)
