"""Rebuild the vendored alert-format schemas in tests/fixtures/ (a maintainer's tool, not run by CI).

Both sources are Apache-2.0; their LICENSE (and OCSF's NOTICE) are copied beside them.

- OCSF 1.5.0, class Detection Finding (2004), as one JSON Schema (draft 2020-12) with
  every object embedded: the ocsf-schema repository at the v1.5.0 release commit
  f0c227b4, compiled by ocsf-lib (``python -m ocsf.compile``), normalised (object-typed
  attributes marked ``object_t``, null keys dropped: the form ocsf-json-schema reads) and
  turned into a JSON Schema by ocsf-json-schema. Attributes the class declares with
  ``"profile": null`` are its own (``is_alert``, ``confidence_id``, ``risk_score``...):
  ocsf-lib keeps their profile's name, so it is removed here.
- ECS 9.2.0: ``generated/ecs/ecs_flat.yml`` of the elastic/ecs repository at tag
  v9.2.0, trimmed to what validation needs: each field's type, whether it is an array,
  and the allowed values of the categorisation fields.

Run in a scratch venv with ``pip install ocsf-lib ocsf-json-schema pyyaml``::

    python scripts/vendor_alert_schemas.py --ocsf-schema /path/to/ocsf-schema@f0c227b4 \\
        --ecs-flat /path/to/ecs@v9.2.0/generated/ecs/ecs_flat.yml --out tests/fixtures
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def _mark_objects(attributes: dict[str, Any], objects: set[str]) -> None:
    for attribute in attributes.values():
        if attribute.get("type") in objects:
            attribute["object_type"] = attribute["type"]
            attribute["type"] = "object_t"


def unprofiled_attributes(schema_dir: Path, class_name: str) -> set[str]:
    """Attributes that ``class_name`` (or the class it extends, nearest definition first)
    declares with ``"profile": null``: OCSF's way of making an attribute of a profile part
    of the class itself (CHANGELOG 1.4.0: "so that the attribute is present w/o the
    profile"). ocsf-lib's compiler keeps the profile's name on them, and the first build
    of this fixture dropped Detection Finding's own ``is_alert``, ``confidence_id``,
    ``risk_score``, ``risk_level_id``, ``device``... as if they needed the
    ``security_control`` or ``host`` profile."""
    classes = {}
    for path in (schema_dir / "events").rglob("*.json"):
        definition = json.loads(path.read_text())
        classes[definition.get("name")] = definition
    chain = []
    name: str | None = class_name
    while name:
        chain.append(classes[name])
        name = classes[name].get("extends")
    nearest: dict[str, bool] = {}
    for definition in reversed(chain):  # the base first, so the class's own word wins
        for key, attribute in definition.get("attributes", {}).items():
            if isinstance(attribute, dict) and "profile" in attribute:
                nearest[key] = attribute["profile"] is None
    return {key for key, unprofiled in nearest.items() if unprofiled}


def ocsf_class_schema(schema_dir: Path, class_name: str) -> dict[str, Any]:
    from ocsf_json_schema import OcsfJsonSchema, OcsfJsonSchemaEmbedded

    compiled = subprocess.run([sys.executable, "-m", "ocsf.compile", str(schema_dir)], check=True,
                              capture_output=True, text=True).stdout
    schema = _strip_nulls(json.loads(compiled))
    objects = set(schema["objects"])
    for group in ("classes", "objects"):
        for item in schema[group].values():
            _mark_objects(item["attributes"], objects)
    attributes = schema["classes"][class_name]["attributes"]
    for key in unprofiled_attributes(schema_dir, class_name):
        attributes[key].pop("profile", None)
    return OcsfJsonSchemaEmbedded(OcsfJsonSchema(schema)).get_class_schema(class_name)


def ecs_fields(flat_yml: Path) -> dict[str, Any]:
    import yaml

    flat = yaml.safe_load(flat_yml.read_text())
    return {name: {"type": field["type"], "array": "array" in (field.get("normalize") or []),
                   **({"allowed": sorted(v["name"] for v in field["allowed_values"])}
                      if field.get("allowed_values") else {})}
            for name, field in sorted(flat.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ocsf-schema", type=Path, required=True)
    parser.add_argument("--ecs-flat", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    args = parser.parse_args()
    ocsf_dir, ecs_dir = args.out / "ocsf-1.5.0", args.out / "ecs-9.2.0"
    ocsf_dir.mkdir(parents=True, exist_ok=True)
    ecs_dir.mkdir(parents=True, exist_ok=True)
    (ocsf_dir / "detection_finding.schema.json").write_text(
        json.dumps(ocsf_class_schema(args.ocsf_schema, "detection_finding"), sort_keys=True, indent=1) + "\n")
    (ecs_dir / "ecs_fields.json").write_text(json.dumps(ecs_fields(args.ecs_flat), indent=1) + "\n")
    for name in ("LICENSE", "NOTICE"):
        if (args.ocsf_schema / name).exists():
            (ocsf_dir / name).write_text((args.ocsf_schema / name).read_text())
    (ecs_dir / "LICENSE.txt").write_text((args.ecs_flat.parents[2] / "LICENSE.txt").read_text())


if __name__ == "__main__":
    main()
