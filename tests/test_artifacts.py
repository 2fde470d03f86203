"""Model bundles: exact round trip, atomic LATEST, and refusal of anything doubtful."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from uba.errors import BundleError, UserError
from uba.model.bundle import (
    BUNDLE_FILE,
    CHECKSUMS_FILE,
    FOREST_FILE,
    LATEST_FILE,
    MAX_BUNDLE_JSON_BYTES,
    MAX_LATEST_BYTES,
    bin_proportions,
    feature_reference,
    latest_version,
    list_versions,
    load_bundle,
    save_bundle,
    score_summary,
)
from uba.model.forest import fit_detector
from uba.settings import ModelSettings

FEATURES = ("session_z", "actions_z", "hour_distance", "device_rarity")
FEATURE_SET = "fs-test-1"


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(21)
    X = rng.normal(size=(1500, len(FEATURES)))
    X[:, 3] = rng.integers(0, 2, len(X))
    detector, scores = fit_detector(X, FEATURES, ModelSettings(n_estimators=30), 98.0)
    return detector, scores, X


def _metadata(scores: np.ndarray, X: np.ndarray) -> dict:
    return {
        "feature_set_version": FEATURE_SET,
        "training_window": {"start": date(2026, 3, 1), "end": date(2026, 3, 21)},
        "row_counts": {"training": int(len(X))},
        "score_summary": score_summary(scores),
        "feature_reference": feature_reference(X, FEATURES),
        "data_fingerprint": "sha256:abc",
    }


@pytest.fixture
def saved(tmp_path, fitted):
    detector, scores, X = fitted
    version = save_bundle(tmp_path, detector, _metadata(scores, X))
    return tmp_path, version


def _load(model_dir: Path, **kwargs):
    return load_bundle(
        model_dir, expected_features=FEATURES, expected_feature_set_version=FEATURE_SET, **kwargs
    )


def _refusal(model_dir: Path, **kwargs) -> str:
    with pytest.raises(BundleError) as caught:
        _load(model_dir, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _rewrite_consistently(bundle_dir: Path, name: str, data: bytes) -> None:
    """Change a file AND its checksum, as someone editing the bundle carefully would."""
    (bundle_dir / name).write_bytes(data)
    checksums = json.loads((bundle_dir / CHECKSUMS_FILE).read_text())
    checksums["files"][name] = hashlib.sha256(data).hexdigest()
    (bundle_dir / CHECKSUMS_FILE).write_text(json.dumps(checksums))


def _edit_body(bundle_dir: Path, **changes) -> None:
    body = json.loads((bundle_dir / BUNDLE_FILE).read_text())
    body.update(changes)
    _rewrite_consistently(bundle_dir, BUNDLE_FILE, json.dumps(body).encode())


def _npz_with(bundle_dir: Path, **changes) -> bytes:
    with np.load(bundle_dir / FOREST_FILE) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays.update(changes)
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v for k, v in arrays.items() if v is not None})
    return buffer.getvalue()


def test_round_trip_gives_identical_scores_and_metadata(saved, fitted):
    detector, scores, X = fitted
    model_dir, version = saved

    bundle = _load(model_dir)

    assert bundle.version == version
    assert bundle.path == model_dir / version
    assert np.array_equal(bundle.detector.anomaly_scores(X), scores)
    assert bundle.detector.threshold == detector.threshold
    assert bundle.detector.feature_names == FEATURES
    assert np.array_equal(bundle.detector.scaler_mean, detector.scaler_mean)
    meta = bundle.metadata
    assert meta["format_version"] == 1
    assert meta["percentile"] == 98.0
    assert meta["training_window"] == {"start": "2026-03-01", "end": "2026-03-21"}
    assert meta["model"]["n_estimators"] == 30 and meta["model"]["n_trees"] == 30
    assert set(meta["libraries"]) >= {"python", "numpy", "sklearn", "polars"}
    assert meta["score_summary"]["count"] == len(scores)
    assert meta["data_fingerprint"] == "sha256:abc"


def test_version_name_is_a_sortable_utc_timestamp_plus_hash(saved):
    _, version = saved
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", version)


def test_latest_moves_atomically_and_leaves_no_temp_files(tmp_path, fitted):
    detector, scores, X = fitted
    first = save_bundle(tmp_path, detector, _metadata(scores, X))
    second = save_bundle(tmp_path, detector, _metadata(scores, X))

    assert first != second
    assert latest_version(tmp_path) == second
    assert (tmp_path / LATEST_FILE).read_text() == second + "\n"
    assert list_versions(tmp_path) == sorted([first, second])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first, second, LATEST_FILE])
    (tmp_path / f"{second}\n").mkdir()  # "$" matched before a final newline: it was listed
    assert list_versions(tmp_path) == sorted([first, second])
    (tmp_path / f"{second}\n").rmdir()
    assert sorted(p.name for p in (tmp_path / second).iterdir()) == sorted(
        [BUNDLE_FILE, CHECKSUMS_FILE, FOREST_FILE]
    )
    assert _load(tmp_path).version == second
    assert _load(tmp_path, version=first).version == first


def test_bundle_files_hold_no_pickled_objects(saved):
    model_dir, version = saved
    with np.load(model_dir / version / FOREST_FILE, allow_pickle=False) as npz:
        kinds = {npz[name].dtype.kind for name in npz.files}
    assert kinds <= set("biuf")
    json.loads((model_dir / version / BUNDLE_FILE).read_text())


def test_a_pickled_array_is_refused_and_never_executed(saved, tmp_path_factory):
    model_dir, version = saved
    marker = tmp_path_factory.mktemp("marker") / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = np.array([Payload()], dtype=object)
    _rewrite_consistently(
        model_dir / version, FOREST_FILE, _npz_with(model_dir / version, node_value=evil)
    )

    message = _refusal(model_dir)
    assert f"{FOREST_FILE}: not a readable numeric .npz archive" in message
    assert not marker.exists()


def test_one_changed_byte_in_the_arrays_is_refused(saved):
    model_dir, version = saved
    path = model_dir / version / FOREST_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    message = _refusal(model_dir)
    assert str(path) in message and "checksum mismatch" in message


def test_hand_edited_threshold_is_refused(saved):
    model_dir, version = saved
    path = model_dir / version / BUNDLE_FILE
    body = json.loads(path.read_text())
    body["threshold"] = 0.99
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")

    message = _refusal(model_dir)
    assert str(path) in message and "checksum mismatch" in message


@pytest.mark.parametrize("name", [BUNDLE_FILE, FOREST_FILE, CHECKSUMS_FILE])
def test_a_missing_file_is_refused(saved, name):
    model_dir, version = saved
    (model_dir / version / name).unlink()

    message = _refusal(model_dir)
    assert f"{model_dir / version / name}: file is missing" in message


def test_wrong_format_version_is_refused(saved):
    model_dir, version = saved
    _edit_body(model_dir / version, format_version=2)
    assert "incompatible format_version 2" in _refusal(model_dir)
    assert "upgrade uba" in _refusal(model_dir)
    _edit_body(model_dir / version, format_version="one")
    assert "incompatible format_version a string of 3 characters" in _refusal(model_dir)


def test_a_different_feature_list_is_refused(saved):
    model_dir, _ = saved
    other = ("session_z", "actions_z", "hour_distance", "new_feature")
    with pytest.raises(
        BundleError, match=r"feature list does not match.*unknown to this code: \['device_rarity'\]"
    ):
        load_bundle(model_dir, expected_features=other)
    with pytest.raises(BundleError, match="same features in a different order"):
        load_bundle(model_dir, expected_features=tuple(reversed(FEATURES)))
    with pytest.raises(
        BundleError, match="feature_set_version is 'fs-test-1', this code computes 'fs-test-2'"
    ):
        load_bundle(model_dir, expected_feature_set_version="fs-test-2")


def test_malformed_json_is_refused(saved):
    model_dir, version = saved
    _rewrite_consistently(model_dir / version, BUNDLE_FILE, b'{"format_version": 1,')
    assert f"{model_dir / version / BUNDLE_FILE}: malformed JSON" in _refusal(model_dir)
    _rewrite_consistently(model_dir / version, BUNDLE_FILE, b'{"threshold": NaN}')
    assert "malformed JSON" in _refusal(model_dir)
    (model_dir / version / CHECKSUMS_FILE).write_text("[1, 2]")
    assert f"{CHECKSUMS_FILE}: expected" in _refusal(model_dir)


def test_arrays_of_inconsistent_shapes_are_refused(saved):
    model_dir, version = saved
    bundle_dir = model_dir / version
    with np.load(bundle_dir / FOREST_FILE) as npz:
        threshold = npz["threshold"]
    _rewrite_consistently(bundle_dir, FOREST_FILE, _npz_with(bundle_dir, threshold=threshold[:-1]))
    message = _refusal(model_dir)
    assert f"{bundle_dir / FOREST_FILE}: 'threshold' has {len(threshold) - 1} entries" in message

    _rewrite_consistently(
        bundle_dir, FOREST_FILE, _npz_with(bundle_dir, threshold=threshold, node_value=None)
    )
    assert "do not match the expected" in _refusal(model_dir)


def test_scaler_of_the_wrong_length_is_refused(saved):
    model_dir, version = saved
    body = json.loads((model_dir / version / BUNDLE_FILE).read_text())
    body["scaler"]["mean"] = body["scaler"]["mean"][:-1]
    _edit_body(model_dir / version, scaler=body["scaler"])
    assert "'scaler_mean' must have shape (4,)" in _refusal(model_dir)


def test_non_numeric_threshold_is_refused(saved):
    model_dir, version = saved
    _edit_body(model_dir / version, threshold="0.5")
    assert "'threshold' must be a number" in _refusal(model_dir)


def test_non_integer_sub_sample_size_is_refused(saved):
    model_dir, version = saved
    body = json.loads((model_dir / version / BUNDLE_FILE).read_text())
    _edit_body(model_dir / version, model=body["model"] | {"max_samples_": "256"})
    assert "'model.max_samples_' must be an integer, got a string of 3 characters" in _refusal(model_dir)


def test_a_bundle_copied_under_another_version_name_is_refused(saved):
    model_dir, version = saved
    other = "20000101T000000Z-00000000"
    shutil.copytree(model_dir / version, model_dir / other)
    assert f"says version '{version}' but lives in directory '{other}'" in _refusal(
        model_dir, version=other
    )


def test_missing_or_bad_latest_pointer_is_refused(saved, tmp_path_factory):
    model_dir, version = saved
    (model_dir / LATEST_FILE).write_text("../../etc\n")
    assert "does not hold a bundle version" in _refusal(model_dir)

    (model_dir / LATEST_FILE).write_text("20991231T235959Z-deadbeef\n")
    assert "points to version 20991231T235959Z-deadbeef" in _refusal(model_dir)

    (model_dir / LATEST_FILE).unlink()
    assert latest_version(model_dir) is None
    assert "no LATEST pointer" in _refusal(model_dir)
    assert _load(model_dir, version=version).version == version

    empty = tmp_path_factory.mktemp("nothing") / "models"
    assert "no model directory" in _refusal(empty)
    assert list_versions(empty) == []


def test_version_argument_cannot_escape_the_model_dir(saved):
    model_dir, _ = saved
    assert "is not a bundle version" in _refusal(model_dir, version="../outside")
    assert "no such bundle version" in _refusal(model_dir, version="20000101T000000Z-00000000")


def test_bundle_error_is_a_user_error():
    assert issubclass(BundleError, UserError)


def test_metadata_may_not_override_bundle_fields_or_hold_non_json(tmp_path, fitted):
    detector, _, _ = fitted
    with pytest.raises(ValueError, match=r"reserved bundle keys: \['threshold'\]"):
        save_bundle(tmp_path, detector, {"threshold": 0.1})
    with pytest.raises(ValueError, match=r"metadata 'row_counts.train' is nan"):
        save_bundle(tmp_path, detector, {"row_counts": {"train": float("nan")}})
    with pytest.raises(ValueError, match="has type object"):
        save_bundle(tmp_path, detector, {"thing": object()})
    assert list(tmp_path.iterdir()) == []


def test_score_summary_describes_the_training_scores():
    scores = np.linspace(0.3, 0.7, 1001)
    summary = score_summary(scores)

    assert summary["count"] == 1001
    assert summary["min"] == 0.3 and summary["max"] == 0.7
    assert summary["quantiles"]["values"][
        summary["quantiles"]["levels"].index(0.5)
    ] == pytest.approx(0.5)
    assert sum(summary["histogram"]["counts"]) == 1001
    assert len(summary["histogram"]["edges"]) == len(summary["histogram"]["counts"]) + 1
    assert summary["histogram"]["counts"][:30] == [0] * 30
    json.dumps(summary, allow_nan=False)


def test_feature_reference_bins_give_equal_shares_and_collapse_for_constants():
    rng = np.random.default_rng(5)
    X = np.column_stack([rng.normal(size=5000), np.full(5000, 3.0), rng.integers(0, 2, 5000)])
    reference = feature_reference(X, ["z", "constant", "flag"])

    z = reference["features"]["z"]
    assert len(z["cuts"]) == 9
    assert np.allclose(z["proportions"], 0.1, atol=0.001)
    assert reference["features"]["constant"] == {"cuts": [3.0], "proportions": [1.0, 0.0]}
    flag = reference["features"]["flag"]
    assert flag["cuts"] == [0.0, 1.0]
    assert np.isclose(sum(flag["proportions"]), 1.0) and flag["proportions"][2] == 0.0
    shifted = bin_proportions(X[:, 0] + 10, z["cuts"])
    assert shifted[-1] == 1.0


# ---------------------------------------------------------------- hostile files (hardening)

SECRET = "root:x:0:0:SECRET-LINE-7f3a"


def _no_echo(message: str) -> None:
    assert "SECRET" not in message and "root:x" not in message


def test_latest_linked_outside_the_model_dir_is_refused_without_echo(saved, tmp_path_factory):
    model_dir, _ = saved
    outside = tmp_path_factory.mktemp("outside") / "passwd"
    outside.write_text(SECRET + "\n")
    (model_dir / LATEST_FILE).unlink()
    (model_dir / LATEST_FILE).symlink_to(outside)
    message = _refusal(model_dir)
    assert "leads outside the model directory" in message
    _no_echo(message)


def test_latest_holding_another_files_text_is_refused_without_echo(saved):
    model_dir, _ = saved
    (model_dir / LATEST_FILE).write_text(SECRET + "\nbin:x:1:1\n")
    message = _refusal(model_dir)
    assert "does not hold a bundle version" in message
    _no_echo(message)


def test_bundle_files_or_version_dir_linked_outside_are_refused(saved, tmp_path_factory):
    model_dir, version = saved
    outside = tmp_path_factory.mktemp("elsewhere")
    target = outside / BUNDLE_FILE
    shutil.copy(model_dir / version / BUNDLE_FILE, target)
    (model_dir / version / BUNDLE_FILE).unlink()
    (model_dir / version / BUNDLE_FILE).symlink_to(target)
    assert "leads outside the model directory" in _refusal(model_dir)

    moved = outside / "bundle-dir"
    shutil.move(model_dir / version, moved)
    (model_dir / version).symlink_to(moved, target_is_directory=True)
    assert "leads outside the model directory" in _refusal(model_dir)


def test_a_link_inside_the_model_dir_is_followed(saved):
    model_dir, version = saved
    (model_dir / "copy.json").write_bytes((model_dir / version / BUNDLE_FILE).read_bytes())
    (model_dir / version / BUNDLE_FILE).unlink()
    (model_dir / version / BUNDLE_FILE).symlink_to(model_dir / "copy.json")
    assert _load(model_dir).version == version


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", [LATEST_FILE, CHECKSUMS_FILE, FOREST_FILE])
def test_a_fifo_is_refused_without_blocking(saved, name):
    model_dir, version = saved
    path = model_dir / name if name == LATEST_FILE else model_dir / version / name
    path.unlink()
    os.mkfifo(path)
    assert "is a FIFO, not a regular file" in _refusal(model_dir, **({} if name == LATEST_FILE else
                                                                       {"version": version}))


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_a_device_is_refused(saved):
    model_dir, version = saved
    path = model_dir / version / BUNDLE_FILE
    path.unlink()
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: reading never ends
    assert "is a character device, not a regular file" in _refusal(model_dir)


def test_oversized_files_are_refused_before_reading(saved):
    model_dir, version = saved
    with open(model_dir / version / BUNDLE_FILE, "r+b") as handle:
        handle.truncate(MAX_BUNDLE_JSON_BYTES + 1)  # sparse: costs no disk
    assert f"over the {MAX_BUNDLE_JSON_BYTES}-byte limit" in _refusal(model_dir)
    (model_dir / LATEST_FILE).write_text(version + "\n" + " " * MAX_LATEST_BYTES)
    assert f"over the {MAX_LATEST_BYTES}-byte limit" in _refusal(model_dir)


def zip_bomb(inflated: int) -> bytes:
    """A small deflated .npz member that inflates to ``inflated`` zero bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive, \
            archive.open("threshold.npy", "w", force_zip64=True) as member:
        chunk = bytes(1 << 20)
        for _ in range(inflated // len(chunk) + 1):
            member.write(chunk)
    return buffer.getvalue()


def test_a_zip_bomb_forest_is_refused_before_inflating(saved, monkeypatch):
    model_dir, version = saved
    monkeypatch.setattr("uba.model.bundle.MAX_FOREST_BYTES", 8 << 20)  # the check reads the constant when it runs
    bomb = zip_bomb(16 << 20)
    assert len(bomb) < 1 << 20
    _rewrite_consistently(model_dir / version, FOREST_FILE, bomb)
    assert "is over the limit (64 arrays, 8388608 bytes)" in _refusal(model_dir)


def test_checksums_nested_too_deeply_is_a_one_line_refusal(saved):
    model_dir, version = saved
    (model_dir / version / CHECKSUMS_FILE).write_text("[" * 100_000 + "]" * 100_000)
    assert "malformed JSON (nested too deeply)" in _refusal(model_dir)


def test_values_from_bundle_files_are_described_not_echoed(saved):
    model_dir, version = saved
    _edit_body(model_dir / version, format_version=SECRET)
    message = _refusal(model_dir)
    assert "incompatible format_version a string of" in message
    _no_echo(message)
    _edit_body(model_dir / version, format_version=1, threshold=SECRET)
    message = _refusal(model_dir)
    assert "'threshold' must be a number" in message
    _no_echo(message)


def test_invalid_utf8_or_json_in_a_bundle_file_shows_no_content(saved):
    model_dir, version = saved
    _rewrite_consistently(model_dir / version, BUNDLE_FILE, SECRET.encode() + b"\xff")
    message = _refusal(model_dir)
    assert "malformed JSON (not UTF-8 text" in message
    _no_echo(message)
    _rewrite_consistently(model_dir / version, BUNDLE_FILE, ('{"a": "' + SECRET + '" x}').encode())
    message = _refusal(model_dir)
    assert "malformed JSON (Expecting" in message
    _no_echo(message)
