"""The data shapes a run was built for, saved beside it for runs whose dataset need not be on the
machine that uses them (`maskgen import-weights`): `source_info`'s dict as `data_info.json`."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from maskgen.data.specs import fields_from_json, fields_to_json

RUN_DATA_INFO_FILE = "data_info.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return value


def save_run_data_info(workdir: str, data_info: dict) -> None:
    """Writes `data_info` (specs in "fields" included) to `workdir/data_info.json`."""
    info = dict(data_info)
    if "fields" in info:
        info["fields"] = fields_to_json(info["fields"])
    with open(os.path.join(workdir, RUN_DATA_INFO_FILE), "w") as f:
        json.dump(_jsonable(info), f, indent=1, sort_keys=True)


def load_run_data_info(workdir: str) -> dict | None:
    """The data shapes saved by `save_run_data_info`, or None: a run trained here reads them from
    its data source. Shapes come back as tuples."""
    path = os.path.join(workdir, RUN_DATA_INFO_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        info = json.load(f)
    if "fields" in info:
        info["fields"] = fields_from_json(info["fields"])
    for key in ("image_shape", "token_shape"):
        if isinstance(info.get(key), list):
            info[key] = tuple(info[key])
    return info
