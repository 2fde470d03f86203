"""Versioned model bundles: plain arrays + JSON + checksums, never pickle.

Layout of ``<model-dir>``::

    LATEST                               one line: the current version
    20260322T010203Z-ab12cd34/
        bundle.json                      feature list, threshold, scaler, params, metadata
        forest.npz                       the compact forest's arrays (numeric only)
        checksums.json                   sha256 of bundle.json and forest.npz

A bundle is data, not code: loading reads JSON and numeric ``.npz`` arrays with
``allow_pickle=False`` and rebuilds the detector from them, so a bundle from an
untrusted place cannot run anything. Before anything is parsed, every file is checked
against ``checksums.json``; then the format version, the feature list and the array
shapes are checked. Anything wrong raises :class:`uba.errors.BundleError` naming the
file and the problem. See ``docs/model-bundle.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import os
import platform
import re
import stat
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import NotRequired, TypedDict, cast

import numpy as np
import numpy.typing as npt
import polars as pl

from uba import __version__
from uba import io as uba_io
from uba.errors import BundleError
from uba.model.forest import FOREST_ARRAY_NAMES, CompactForest, Detector, FloatArray, ModelParams
from uba.schema import JsonValue

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
BUNDLE_FILE = "bundle.json"
FOREST_FILE = "forest.npz"
CHECKSUMS_FILE = "checksums.json"
LATEST_FILE = "LATEST"
DATA_FILES = (BUNDLE_FILE, FOREST_FILE)
VERSION_PATTERN = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}\Z")  # \Z: "$" passes a final newline
RESERVED_KEYS = frozenset(
    {
        "format_version",
        "version",
        "created_at",
        "feature_names",
        "threshold",
        "percentile",
        "scaler",
        "model",
        "libraries",
        "files",
    }
)
DEFAULT_SCORE_QUANTILES = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.999)
SCORE_HISTOGRAM_BINS = 100
FEATURE_REFERENCE_BINS = 10
_INTEGER_ARRAYS = {"children_left", "children_right", "feature", "tree_offsets"}
# Size caps for reading a bundle: far above what `train` writes (a 5000-tree forest of
# 256-sample trees is ~60 MB of arrays), far below what would exhaust a pod's memory.
MAX_LATEST_BYTES = 256
MAX_CHECKSUMS_BYTES = 1 << 20
MAX_BUNDLE_JSON_BYTES = 64 << 20
MAX_FOREST_BYTES = 512 << 20
MAX_FOREST_MEMBERS = 64
FILE_LIMITS = {CHECKSUMS_FILE: MAX_CHECKSUMS_BYTES, BUNDLE_FILE: MAX_BUNDLE_JSON_BYTES,
               FOREST_FILE: MAX_FOREST_BYTES}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class ScoreQuantiles(TypedDict):
    levels: list[float]
    values: list[float]


class ScoreHistogram(TypedDict):
    edges: list[float]
    counts: list[int]


class ScoreSummary(TypedDict):
    """:func:`score_summary`: the training scores' distribution, as stored."""

    count: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: ScoreQuantiles
    histogram: ScoreHistogram


class FeatureBins(TypedDict):
    cuts: list[float]
    proportions: list[float]


class FeatureReference(TypedDict):
    """:func:`feature_reference`: per-feature training bins, as stored."""

    rows: int
    bins: int
    features: dict[str, FeatureBins]


class TrainingWindow(TypedDict):
    start: str  # ISO dates
    end: str
    days_with_data: int
    # the days of the window that had events: the days the forest saw (a window reaching past
    # the data, or with gaps, saw none of the others); bundles from before it lack the list
    days: NotRequired[list[str]]


class TrainingRowCounts(TypedDict):
    training: int
    users: int
    excluded_confirmed_malicious: int


class ScoreBins(TypedDict):
    """Score cuts and the training share of each bin (the cross-fitted reference's)."""

    cuts: list[float]
    proportions: list[float]


class WeekdayReference(TypedDict):
    """One weekday of ``drift_reference_by_weekday`` (``uba.monitoring.drift.weekday_references``):
    the pooled summaries over that weekday's training rows."""

    rows: int
    days: int
    feature_reference: FeatureReference
    score_summary: ScoreSummary


class ReferencePart(TypedDict):
    """The pooled part of ``drift_reference``, or one weekday of it: mature rows, cross-fitted scores."""

    rows: int
    days: int
    user_days: int
    alerted_user_days: int
    feature_reference: FeatureReference
    score_reference: ScoreBins


class DriftReference(TypedDict):
    """``drift_reference`` (``uba.monitoring.drift.build_drift_reference``), as stored.

    Typed here, below monitoring, because the bundle's metadata names it.
    """

    version: int
    scores: str  # "cross-fitted", or "in-sample" for a one-day window
    min_history_days: int
    warm_up_rows_included: bool
    constant_features: list[str]
    pooled: ReferencePart
    weekdays: dict[str, ReferencePart]  # "0" (Monday) .. "6", weekdays with enough days


class TrainingMetadata(TypedDict, total=False):
    """What ``train`` stores at the top level of ``bundle.json`` beside the forest.

    Optional, because ``save_bundle`` takes any JSON-friendly metadata and a bundle is
    read as it was written (bundles from before the drift references lack them). The
    settings are plain JSON whose shape ``uba.settings`` defines.
    """

    feature_set_version: str | None
    peer_features: bool
    training_window: TrainingWindow
    rows: TrainingRowCounts
    score_summary: ScoreSummary
    feature_reference: FeatureReference
    data_fingerprint: str
    settings: Mapping[str, object]
    drift_reference_by_weekday: dict[str, WeekdayReference]  # "0" (Monday) .. "6"
    drift_reference: DriftReference


class ScalerRecord(TypedDict):
    kind: str
    mean: list[float]
    scale: list[float]


class FilesRecord(TypedDict):
    forest: str
    arrays: list[str]


class BundleMetadata(TrainingMetadata):
    """The whole ``bundle.json``: the training metadata plus the keys ``save_bundle``
    reserves (RESERVED_KEYS), which every bundle has."""

    format_version: int
    version: str
    created_at: str
    feature_names: list[str]
    threshold: float
    percentile: float
    scaler: ScalerRecord
    model: ModelParams
    libraries: dict[str, str]
    files: FilesRecord


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle; ``metadata`` is the whole parsed ``bundle.json``."""

    version: str
    path: Path
    detector: Detector
    metadata: BundleMetadata


# ---------------------------------------------------------------- reference summaries


def score_summary(train_scores: npt.ArrayLike, bins: int = SCORE_HISTOGRAM_BINS) -> ScoreSummary:
    """Distribution of training anomaly scores, kept so later runs can detect drift.

    The histogram uses fixed edges over [0, 1] (scores live in (0, 1]) so a later
    day's scores can be binned identically without knowing the training data.
    """
    scores = np.asarray(train_scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError("score_summary needs a non-empty 1-D array of scores")
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=edges)
    return {
        "count": int(scores.size),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "min": float(scores.min()),
        "max": float(scores.max()),
        "quantiles": {
            "levels": list(DEFAULT_SCORE_QUANTILES),
            "values": [float(v) for v in np.quantile(scores, DEFAULT_SCORE_QUANTILES)],
        },
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def bin_proportions(values: npt.ArrayLike, cuts: Sequence[float] | FloatArray) -> FloatArray:
    """Share of values per bin (-inf, c1], (c1, c2], ..., (ck, inf); the PSI bin convention.

    Defined here, next to :func:`feature_reference`, so training and a later drift
    check can never bin differently.
    """
    values64 = np.asarray(values, dtype=np.float64)
    if values64.size == 0:
        return np.zeros(len(cuts) + 1)
    index = np.searchsorted(np.asarray(cuts, dtype=np.float64), values64, side="left")
    return np.bincount(index, minlength=len(cuts) + 1) / values64.size


def feature_reference(
    X: npt.ArrayLike, feature_names: Sequence[str], bins: int = FEATURE_REFERENCE_BINS
) -> FeatureReference:
    """Per-feature quantile bins of the training data, the reference for a later PSI.

    Cuts are training quantiles (duplicates dropped, so a discrete or constant feature
    gets fewer bins); proportions follow :func:`bin_proportions`.
    """
    X64 = np.asarray(X, dtype=np.float64)
    if X64.ndim != 2 or X64.shape[1] != len(feature_names) or X64.shape[0] == 0:
        raise ValueError(
            f"feature_reference needs a (rows, {len(feature_names)}) matrix, got {X64.shape}"
        )
    levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    features: dict[str, FeatureBins] = {}
    for column, name in enumerate(feature_names):
        values = X64[:, column]
        cuts = np.unique(np.quantile(values, levels))
        features[name] = {
            "cuts": [float(c) for c in cuts],
            "proportions": [float(p) for p in bin_proportions(values, cuts)],
        }
    return {"rows": int(X64.shape[0]), "bins": bins, "features": features}


# ---------------------------------------------------------------- versions and pointer


def list_versions(model_dir: Path) -> list[str]:
    """Finished bundle versions, oldest first (names sort by creation time)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        p.name for p in model_dir.iterdir() if p.is_dir() and VERSION_PATTERN.match(p.name)
    )


def latest_version(model_dir: Path) -> str | None:
    """Version named by the ``LATEST`` pointer, or None when there is no pointer yet.

    The pointer is read like a bundle file (inside the model directory, a regular file,
    at most MAX_LATEST_BYTES), and its content is never repeated in an error: a pointer
    swapped for a link to /etc/passwd must not print that file's first line.
    """
    pointer = Path(model_dir) / LATEST_FILE
    if not os.path.lexists(pointer):
        return None
    data = read_bundle_file(pointer, Path(model_dir), MAX_LATEST_BYTES)
    try:
        version = data.decode("ascii").strip()
    except UnicodeDecodeError:
        version = ""
    if not VERSION_PATTERN.match(version):
        raise BundleError(
            f"{pointer}: does not hold a bundle version (expected one line such as "
            f"20260322T010203Z-ab12cd34, found {len(data)} bytes that are not one)"
        )
    return version


def _write_latest(model_dir: Path, version: str) -> None:
    """Readers see the old pointer or the new one, never half, and it survives a power cut."""
    uba_io.write_text_atomic(version + "\n", model_dir / LATEST_FILE, durable=True)


# ---------------------------------------------------------------- saving


def _jsonable(value: object, where: str) -> JsonValue:
    """Metadata to strict JSON: dates as ISO strings, numpy values as Python ones."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        return _jsonable(value.item(), where)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"metadata '{where}' is {value}, which JSON cannot hold")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError(f"metadata '{where}' has type {type(value).__name__}, which JSON cannot hold")


def _library_versions() -> dict[str, JsonValue]:
    versions: dict[str, JsonValue] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "uba": __version__,
    }
    for label, dist in (("sklearn", "scikit-learn"), ("polars", "polars")):
        try:
            versions[label] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            versions[label] = "not installed"
    return versions


def _bundle_body(
    detector: Detector, metadata: Mapping[str, object], created: datetime
) -> dict[str, JsonValue]:
    clash = RESERVED_KEYS & set(metadata)
    if clash:
        raise ValueError(f"metadata may not set reserved bundle keys: {sorted(clash)}")
    forest = detector.forest
    body = {str(key): _jsonable(value, str(key)) for key, value in metadata.items()}
    body.setdefault("feature_set_version", None)
    params = _jsonable(dict(detector.params), "params")
    assert isinstance(params, dict)  # a mapping becomes a JSON object
    body.update(
        {
            "format_version": FORMAT_VERSION,
            "created_at": created.isoformat(),
            "feature_names": list[JsonValue](detector.feature_names),
            "threshold": detector.threshold,
            "percentile": detector.percentile,
            "scaler": {
                "kind": "standard",
                "mean": [float(v) for v in detector.scaler_mean],
                "scale": [float(v) for v in detector.scaler_scale],
            },
            "model": {
                **params,
                "n_trees": forest.n_trees,
                "n_nodes": forest.n_nodes,
                "depth": forest.depth,
                "max_samples_": forest.max_samples,
            },
            "libraries": _library_versions(),
            "files": {"forest": FOREST_FILE, "arrays": list[JsonValue](FOREST_ARRAY_NAMES)},
        }
    )
    return body


def _npz_bytes(forest: CompactForest) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **forest.arrays())  # numeric arrays: the same bytes either way
    return buffer.getvalue()


def _content_hash(body: Mapping[str, JsonValue], forest: CompactForest) -> str:
    """Short hash of the bundle content (JSON body + raw array bytes), for the version name."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode())
    for name, array in forest.arrays().items():
        digest.update(name.encode())
        digest.update(str(array.dtype).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:8]


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _dump_json(data: JsonValue) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def save_bundle(model_dir: Path, detector: Detector, metadata: Mapping[str, object]) -> str:
    """Write a new bundle version and point ``LATEST`` at it; returns the version.

    The bundle is written into a hidden staging directory and renamed into place, so a
    reader never sees a partial bundle; ``LATEST`` moves only after that rename.
    ``metadata`` (training window, row counts, :func:`score_summary`,
    :func:`feature_reference`, data fingerprint, ``feature_set_version`` ...) is stored
    at the top level of ``bundle.json``; it must be JSON-friendly and may not reuse a
    reserved key.
    """
    model_dir = Path(model_dir)
    created = datetime.now(UTC)
    body = _bundle_body(detector, metadata, created)
    version = f"{created.strftime('%Y%m%dT%H%M%SZ')}-{_content_hash(body, detector.forest)}"
    body["version"] = version
    files = {BUNDLE_FILE: _dump_json(body), FOREST_FILE: _npz_bytes(detector.forest)}
    digests: dict[str, JsonValue] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    checksums: dict[str, JsonValue] = {"algorithm": "sha256", "files": digests}
    files[CHECKSUMS_FILE] = _dump_json(checksums)
    staging = uba_io.make_staging_dir(model_dir)
    try:
        for name, data in files.items():
            _write_file(staging / name, data)
        uba_io.fsync_dir(staging)
        os.rename(staging, model_dir / version)
    except OSError as exc:
        raise BundleError(f"{model_dir / version}: cannot write the bundle ({exc})") from exc
    finally:
        if staging.exists():
            for leftover in staging.iterdir():
                leftover.unlink()
            staging.rmdir()
    uba_io.fsync_dir(model_dir)
    _write_latest(model_dir, version)
    return version


# ---------------------------------------------------------------- loading


def describe_value(value: object) -> str:
    """A value from a bundle file, fit for an error message: numbers and bundle versions
    as themselves, anything else only by its type and size, so an error never carries a
    file's content along (a LATEST or bundle.json swapped for a secret must not leak it)."""
    if value is None or isinstance(value, bool | int | float):
        text = repr(value)
        return text if len(text) <= 40 else f"a {len(text)}-digit number"
    if isinstance(value, str):
        return repr(value) if VERSION_PATTERN.match(value) else f"a string of {len(value)} characters"
    if isinstance(value, list | dict):
        return f"a JSON {'array' if isinstance(value, list) else 'object'} of {len(value)} entries"
    return f"a value of type {type(value).__name__}"


def _echo(name: str) -> str:
    """A feature or array name from a bundle file as itself when it is an identifier, else described."""
    return name if _IDENTIFIER.fullmatch(name) else describe_value(name)


def _inside(path: Path, root: Path) -> str:
    """The real path of ``path``; a symlink that leads out of ``root`` is refused."""
    root_real = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([root_real, real]) != root_real:
        raise BundleError(f"{path}: is a link that leads outside the model directory {root}; refused")
    return real


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check_regular(path: Path, info: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{path}: is {_file_kind(info.st_mode)}, not a regular file; refused")
    if info.st_size > limit:
        raise BundleError(f"{path}: {info.st_size} bytes, over the {limit}-byte limit for this file")


def read_bundle_file(path: Path, root: Path, limit: int) -> bytes:
    """The bytes of a regular file inside ``root``, at most ``limit`` of them.

    Refuses links out of the model directory, FIFOs and devices (reading one would
    block or never end: checked before opening, and again on the opened descriptor,
    which is opened non-blocking so a FIFO swapped in meanwhile cannot hang the
    reader), and files over the cap (checked on the size and on the bytes read).
    """
    real = _inside(path, root)
    try:
        _check_regular(path, os.stat(real), limit)
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: file is missing (incomplete bundle)") from exc
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from exc
    with os.fdopen(fd, "rb") as handle:
        _check_regular(path, os.fstat(fd), limit)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{path}: over the {limit}-byte limit for this file")
    return data


def _parse_json(path: Path, data: bytes) -> JsonValue:
    """JSON with standard constants only; the error says where, never what was there."""
    try:
        return cast(JsonValue, json.loads(data.decode("utf-8"), parse_constant=_reject_constant))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: malformed JSON (not UTF-8 text at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except RecursionError as exc:
        raise BundleError(f"{path}: malformed JSON (nested too deeply)") from exc
    except ValueError as exc:
        raise BundleError(f"{path}: malformed JSON ({exc})") from exc


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


def _verified_files(bundle_dir: Path, model_dir: Path) -> dict[str, bytes]:
    """Read every data file once and check it against checksums.json before any parsing.

    The same bytes that were hashed are the ones parsed, so a file swapped between
    the check and the parse cannot slip through.
    """
    checksums_path = bundle_dir / CHECKSUMS_FILE
    checksums = _parse_json(checksums_path, read_bundle_file(checksums_path, model_dir, MAX_CHECKSUMS_BYTES))
    listed = checksums.get("files") if isinstance(checksums, dict) else None
    if not isinstance(checksums, dict) or not isinstance(listed, dict) or checksums.get("algorithm") != "sha256":
        raise BundleError(f"{checksums_path}: expected {{'algorithm': 'sha256', 'files': {{...}}}}")
    missing = [name for name in DATA_FILES if name not in listed]
    if missing:
        raise BundleError(f"{checksums_path}: no checksum for {', '.join(missing)}")
    contents = {}
    for name in DATA_FILES:
        data = read_bundle_file(bundle_dir / name, model_dir, FILE_LIMITS[name])
        actual = hashlib.sha256(data).hexdigest()
        expected = listed[name]
        if not isinstance(expected, str) or not hmac.compare_digest(actual, expected):
            said = f"{expected[:12]}..." if isinstance(expected, str) and re.fullmatch(r"[0-9a-f]{64}", expected) \
                else "no sha256"
            raise BundleError(
                f"{bundle_dir / name}: checksum mismatch (sha256 {actual[:12]}..., checksums.json "
                f"says {said}): the file was changed or damaged after it was written"
            )
        contents[name] = data
    return contents


def _check_format(path: Path, body: JsonValue, version: str) -> dict[str, JsonValue]:
    """``body`` as a JSON object of a format this code reads, in directory ``version``."""
    if not isinstance(body, dict):
        raise BundleError(f"{path}: expected a JSON object at the top level")
    found = body.get("format_version")
    if found not in SUPPORTED_FORMAT_VERSIONS:
        hint = (
            "written by a newer uba; upgrade uba"
            if isinstance(found, int) and found > FORMAT_VERSION
            else "retrain the model"
        )
        raise BundleError(
            f"{path}: incompatible format_version {describe_value(found)} (this uba reads {sorted(SUPPORTED_FORMAT_VERSIONS)}); {hint}"
        )
    if body.get("version") != version:
        raise BundleError(
            f"{path}: says version {describe_value(body.get('version'))} but lives in directory {version!r}"
        )
    return body


@dataclass(frozen=True)
class PeerContext:
    """Whether the scoring side has a user directory (peer-group statistics), and what
    was looked at (``/data/directory/users.parquet``, ``baseline snapshot as of D``)."""

    present: bool
    source: str
    # the remedies when the model has peer features and this side has none, and the
    # reverse; None: those of a batch run, which reads the directory itself
    remedy_without: str | None = None
    remedy_with: str | None = None


def check_bundle_peers(bundle: Bundle, peers: PeerContext) -> None:
    """``load_bundle``'s peer check for a bundle already loaded: a run (one day of a
    backfill) checks the directory it read against the model it scores with."""
    _check_peer_features(bundle.path / BUNDLE_FILE, cast(Mapping[str, JsonValue], bundle.metadata), peers)


def _check_peer_features(path: Path, body: Mapping[str, JsonValue], peers: PeerContext) -> None:
    """The directory present at training fixed the bundle's feature set: one line when
    the scoring side differs, naming what differs and the remedy."""
    trained = body.get("peer_features") is True
    if trained and not peers.present:
        raise BundleError(
            f"{path}: the model was trained with peer features (a user directory was stored at training) "
            f"but scoring has no directory ({peers.source}); "
            + (peers.remedy_without or "import it (uba-batch users import FILE) or retrain without one"))
    if peers.present and not trained:
        raise BundleError(
            f"{path}: the model was trained without peer features (no user directory at training) but "
            f"scoring has a directory ({peers.source}); "
            + (peers.remedy_with or "retrain the model to use it, or remove the directory"))


def _check_features(
    path: Path,
    body: Mapping[str, JsonValue],
    expected_features: Sequence[str] | None,
    expected_feature_set_version: str | None,
) -> list[str]:
    """The bundle's feature names, once they are known to fit this code."""
    listed = body.get("feature_names")
    names = [n for n in listed if isinstance(n, str)] if isinstance(listed, list) else []
    if not isinstance(listed, list) or not names or len(names) != len(listed):
        raise BundleError(f"{path}: 'feature_names' must be a non-empty list of strings")
    if (
        expected_feature_set_version is not None
        and body.get("feature_set_version") != expected_feature_set_version
    ):
        raise BundleError(
            f"{path}: feature_set_version is {body.get('feature_set_version')!r}, this code computes "
            f"{expected_feature_set_version!r}; retrain the model"
        )
    if expected_features is not None and list(expected_features) != names:
        expected = list(expected_features)
        unknown = [n for n in names if n not in expected]
        absent = [n for n in expected if n not in names]
        if unknown or absent:
            shown = [_echo(n) for n in unknown[:5]]
            detail = f"unknown to this code: {shown}, not in the bundle: {absent[:5]}"
        else:
            detail = "same features in a different order"
        raise BundleError(
            f"{path}: feature list does not match this code's features ({detail}); retrain the model"
        )
    return names


def _check_members(path: Path, data: bytes) -> None:
    """Bound what the archive inflates to before numpy reads it (a zip bomb of a few
    kilobytes could otherwise expand to gigabytes)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise BundleError(f"{path}: not a readable numeric .npz archive ({type(exc).__name__})") from exc
    inflated = sum(m.file_size for m in members)
    if len(members) > MAX_FOREST_MEMBERS or inflated > MAX_FOREST_BYTES:
        raise BundleError(f"{path}: archive of {len(members)} arrays inflating to {inflated} bytes "
                          f"is over the limit ({MAX_FOREST_MEMBERS} arrays, {MAX_FOREST_BYTES} bytes)")


def _load_arrays(path: Path, data: bytes) -> dict[str, np.ndarray]:
    _check_members(path, data)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # a damaged zip or object array: all just "unreadable", never its bytes
        raise BundleError(f"{path}: not a readable numeric .npz archive ({type(exc).__name__})") from exc
    expected = set(FOREST_ARRAY_NAMES)
    if set(arrays) != expected:
        raise BundleError(
            f"{path}: arrays {sorted(_echo(n) for n in arrays)} do not match the expected "
            f"{sorted(expected)}"
        )
    for name, array in arrays.items():
        kinds = (
            "iu" if name in _INTEGER_ARRAYS else ("biu" if name == "missing_go_to_left" else "f")
        )
        if array.dtype.kind not in kinds:
            raise BundleError(
                f"{path}: array '{name}' has dtype {array.dtype}, expected kind {kinds!r}"
            )
    return arrays


def _number(path: Path, body: dict[str, JsonValue], *keys: str) -> JsonValue:
    value: JsonValue = body
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise BundleError(f"{path}: missing field '{'.'.join(keys)}'")
        value = value[key]
    return value


def _real(path: Path, body: dict[str, JsonValue], *keys: str) -> float:
    value = _number(path, body, *keys)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BundleError(f"{path}: '{'.'.join(keys)}' must be a number, got {describe_value(value)}")
    return float(value)


def _reals(path: Path, body: dict[str, JsonValue], *keys: str) -> FloatArray:
    values = _number(path, body, *keys)
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise BundleError(f"{path}: '{'.'.join(keys)}' must be a list of numbers, got {describe_value(values)}")
    return np.asarray(values, dtype=np.float64)


def _rebuild_detector(
    path: Path, npz_path: Path, body: dict[str, JsonValue], names: tuple[str, ...], arrays: dict[str, np.ndarray]
) -> Detector:
    max_samples = _number(path, body, "model", "max_samples_")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int):
        raise BundleError(f"{path}: 'model.max_samples_' must be an integer, got {describe_value(max_samples)}")
    try:
        forest = CompactForest(**arrays, max_samples=max_samples, n_features=len(names))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{npz_path}: {exc}") from exc
    mean, scale = _reals(path, body, "scaler", "mean"), _reals(path, body, "scaler", "scale")
    threshold, percentile = _real(path, body, "threshold"), _real(path, body, "percentile")
    params = body.get("model", {})
    try:  # the model section is the detector's params as saved (plus the forest's shape)
        return Detector(feature_names=names, scaler_mean=mean, scaler_scale=scale, forest=forest,
                        threshold=threshold, percentile=percentile,
                        params=cast(ModelParams, dict(params)) if isinstance(params, dict) else ModelParams())
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{path}: {exc}") from exc


def resolve_version(model_dir: Path, version: str | None) -> str:
    """The bundle version to load (LATEST when ``version`` is None), or the one-line reason
    there is none; callers that need other inputs first can fail on the bundle before them."""
    return _resolve_version(model_dir, version)


def _resolve_version(model_dir: Path, version: str | None) -> str:
    if not model_dir.is_dir():
        raise BundleError(f"{model_dir}: no model directory (train a model first)")
    if version is None:
        version = latest_version(model_dir)
        if version is None:
            raise BundleError(
                f"{model_dir / LATEST_FILE}: no LATEST pointer, so no bundle to load (train a model first)"
            )
        if not (model_dir / version).is_dir():
            raise BundleError(
                f"{model_dir / LATEST_FILE}: points to version {version} but {model_dir / version} does not exist"
            )
    elif not VERSION_PATTERN.match(version):
        raise BundleError(
            f"{version!r} is not a bundle version (expected e.g. 20260322T010203Z-ab12cd34)"
        )
    elif not (model_dir / version).is_dir():
        raise BundleError(
            f"{model_dir / version}: no such bundle version (have: {', '.join(list_versions(model_dir)[-5:]) or 'none'})"
        )
    _inside(model_dir / version, model_dir)
    return version


def load_bundle(
    model_dir: Path,
    version: str | None = None,
    expected_features: Sequence[str] | None = None,
    expected_feature_set_version: str | None = None,
    peers: PeerContext | None = None,
) -> Bundle:
    """Load and verify a bundle (the ``LATEST`` one by default); refuse anything doubtful.

    Callers pass the feature list and feature-set version of the code that will feed
    the detector, so a model trained on other features is refused rather than fed
    misaligned columns. ``peers`` says whether the scoring side has a user directory
    (peer features): a bundle trained the other way is refused first, with the remedy.
    """
    model_dir = Path(model_dir)
    version = _resolve_version(model_dir, version)
    bundle_dir = model_dir / version
    contents = _verified_files(bundle_dir, model_dir)
    body_path = bundle_dir / BUNDLE_FILE
    body = _check_format(body_path, _parse_json(body_path, contents[BUNDLE_FILE]), version)
    if peers is not None:
        _check_peer_features(body_path, body, peers)
    names = _check_features(body_path, body, expected_features, expected_feature_set_version)
    arrays = _load_arrays(bundle_dir / FOREST_FILE, contents[FOREST_FILE])
    detector = _rebuild_detector(body_path, bundle_dir / FOREST_FILE, body, tuple(names), arrays)
    # checked above as far as loading needs; the rest is read as bundle.json was written
    return Bundle(version=version, path=bundle_dir, detector=detector, metadata=cast(BundleMetadata, body))


def read_user_score_history(bundle_path: Path, quantile: float) -> pl.DataFrame | None:
    """A bundle's per-user score table for ``quantile`` (derived data, outside the checksums), or None.

    Read with the bundle guards (``read_bundle_file``): a regular file
    inside the bundle directory once links are resolved, at most
    ``MAX_USER_HISTORY_BYTES``, never a FIFO or device, and parsed from the very bytes
    that were checked. Anything refused or unreadable raises
    :class:`uba.errors.BundleError` naming the file, never quoting it.
    """
    path = uba_io.user_score_history_path(bundle_path, quantile)
    if not os.path.lexists(path):
        return None
    data = read_bundle_file(path, Path(bundle_path), uba_io.MAX_USER_HISTORY_BYTES)
    try:
        return uba_io.read_parquet_file(data)  # pyarrow: damaged bytes raise, never abort the API
    except Exception as exc:  # any Polars/Arrow error on damaged bytes: named by type, never by content
        raise BundleError(f"{path}: not a readable Parquet table ({type(exc).__name__})") from exc
