"""Experiment configs: load `experiments/*.py:arg`, apply `--config.x=y` overrides, validate, lock.

A config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`. The returned
config is locked before overrides are applied, so a mistyped key or a value of the wrong type is
an error that names the key and lists the valid ones, raised before anything heavy runs.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
from typing import Any, Iterable, Sequence

import ml_collections


class ConfigError(ValueError):
    """A config file, override or combination of settings that cannot run."""


def parse_config_arg(arg_string: str | None) -> dict[str, Any]:
    """Parses big_vision-style `"size=S,runlocal=True"` into a dict of Python values."""
    out: dict[str, Any] = {}
    if not arg_string:
        return out
    for part in arg_string.split(","):
        if not part:
            continue
        if "=" not in part:
            out[part.strip()] = True
            continue
        key, value = part.split("=", 1)
        out[key.strip()] = _parse_value(value.strip())
    return out


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`, and locks the result."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path!r}")
    module_spec = importlib.util.spec_from_file_location(
        "maskgen_config_" + os.path.basename(path).removesuffix(".py"), path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} has no get_config(arg) function")
    config = module.get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict")
    config.lock()
    return config


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """Rebuilds a locked config from the JSON a run saved in its workdir."""
    config = ml_collections.ConfigDict(_lists_to_tuples(json.loads(text)))
    config.lock()
    return config


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json(indent=2, sort_keys=True)


def _lists_to_tuples(value):
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _valid_keys_message(node: ml_collections.ConfigDict, key: str, where: str) -> str:
    keys = sorted(node.keys())
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Valid keys under {where}: {', '.join(keys)}.{hint}"


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Applies `key.sub=value` overrides (the part after `--config.`) to a locked config."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like --config.key=value")
        dotted, raw = override.split("=", 1)
        parts = dotted.split(".")
        node, where = config, "config"
        for part in parts[:-1]:
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ConfigError(
                    f"unknown config key {where}.{part} (from --config.{override}). "
                    + _valid_keys_message(node, part, where)
                )
            node, where = node[part], f"{where}.{part}"
        leaf = parts[-1]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ConfigError(
                f"unknown config key {where}.{leaf} (from --config.{override}). "
                + _valid_keys_message(node, leaf, where)
            )
        current = node[leaf]
        value = _parse_value(raw)
        if isinstance(current, str) and not isinstance(value, str):
            value = raw  # `--config.name=123` means the string "123".
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"{where}.{leaf} is a group of settings; set one of its keys instead")
        try:
            node[leaf] = value
        except TypeError as err:
            raise ConfigError(
                f"--config.{override}: {where}.{leaf} expects a {type(current).__name__} "
                f"(current value {current!r}); got {value!r}"
            ) from err


def mesh_shape(mesh_spec: Sequence[Sequence[Any]], num_devices: int) -> dict[str, int]:
    """Resolves `(("data", -1), ("fsdp", 2), ...)` against the device count; -1 means the rest."""
    names = [str(name) for name, _ in mesh_spec]
    sizes = [int(size) for _, size in mesh_spec]
    if len(set(names)) != len(names):
        raise ConfigError(f"config.mesh repeats an axis name: {names}")
    if sizes.count(-1) > 1:
        raise ConfigError(f"config.mesh may have at most one -1 size, got {dict(zip(names, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"config.mesh sizes must be positive or -1, got {dict(zip(names, sizes))}")
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"config.mesh {dict(zip(names, sizes))} does not divide the {num_devices} devices"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"config.mesh {dict(zip(names, sizes))} uses {math.prod(sizes)} devices, "
            f"but {num_devices} are available"
        )
    return dict(zip(names, sizes))


def batch_axes(sharding_rules: Sequence[Sequence[Any]]) -> tuple[str, ...]:
    """The mesh axes that the logical `batch` axis is split over."""
    for logical, physical in sharding_rules:
        if logical == "batch":
            if physical is None:
                return ()
            return (physical,) if isinstance(physical, str) else tuple(physical)
    return ()


def validate_common(config: ml_collections.ConfigDict, num_devices: int, num_processes: int) -> None:
    """Checks the settings every recipe shares; recipes check their own in `Recipe.validate`."""
    problems = []
    sizes = mesh_shape(config.mesh, num_devices)
    for logical, physical in config.sharding_rules:
        physicals = () if physical is None else (physical,) if isinstance(physical, str) else physical
        for axis in physicals:
            if axis not in sizes:
                problems.append(
                    f"config.sharding_rules maps {logical!r} to mesh axis {axis!r}, "
                    f"which is not in config.mesh {tuple(sizes)}"
                )
    data_parallel = math.prod(sizes.get(a, 1) for a in batch_axes(config.sharding_rules))
    if config.batch_size % data_parallel:
        problems.append(
            f"config.batch_size={config.batch_size} is not divisible by the {data_parallel} "
            f"data-parallel devices (mesh {sizes}, batch over {batch_axes(config.sharding_rules)})"
        )
    if config.batch_size % num_processes:
        problems.append(
            f"config.batch_size={config.batch_size} is not divisible by {num_processes} processes"
        )
    if config.total_steps <= 0:
        problems.append(f"config.total_steps must be positive, got {config.total_steps}")
    if not 0 <= config.optimizer.warmup_steps <= config.total_steps:
        problems.append(
            f"config.optimizer.warmup_steps={config.optimizer.warmup_steps} must be in "
            f"[0, total_steps={config.total_steps}]"
        )
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if config[key] <= 0:
            problems.append(f"config.{key} must be positive, got {config[key]}")
    if not 0.0 <= config.ema_decay < 1.0:
        problems.append(f"config.ema_decay must be in [0, 1), got {config.ema_decay}")
    if config.get("remat", "none") not in ("none", "block", "block_save_dots"):
        problems.append(f"config.remat must be 'none', 'block' or 'block_save_dots', got {config.remat!r}")
    if config.compute_dtype not in ("float32", "bfloat16"):
        problems.append(f"config.compute_dtype must be 'float32' or 'bfloat16', got {config.compute_dtype!r}")
    if config.eval_params not in ("params", "ema"):
        problems.append(f"config.eval_params must be 'params' or 'ema', got {config.eval_params!r}")
    for name, spec in config.evals.items():
        if "type" not in spec or "every" not in spec:
            problems.append(
                f"config.evals.{name} needs a 'type' and an 'every' "
                "(N > 0: every N steps and at the end; 0: only at the end; -1: only via `maskgen eval`)"
            )
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


# Logical axis -> mesh axes. Batch is split over data and fsdp; with fsdp > 1 the `embed` axis of
# every parameter (and so of its optimizer state) is sharded too; `tensor` splits heads and MLP.
DEFAULT_SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("patch", None),
    ("norm", None),
    ("conv_in", None),  # convolutional tokenizers are data parallel by default
    ("conv_out", None),
    ("codebook", None),
    ("vocab", "tensor"),  # token embedding rows / output logits (MaxText shards the vocabulary too)
    ("classes", None),  # class-embedding rows (few; replicated)
    ("cond", None),  # adaLN conditioning input width (its output side is already sharded)
    ("positions", None),  # learned position-embedding rows
)


def base_config() -> ml_collections.ConfigDict:
    """Settings every recipe shares; an experiment file fills in recipe, data and model."""
    config = ml_collections.ConfigDict()
    config.recipe = ""
    config.seed = 0
    config.total_steps = 1000
    config.batch_size = 128  # global, over all devices and processes
    config.compute_dtype = "float32"  # or "bfloat16" (params and optimizer state stay float32)
    config.remat = "none"  # transformer blocks: "none" | "block" | "block_save_dots" (models/layers.py)
    config.ema_decay = 0.999
    config.eval_params = "ema"  # which weights evaluators and `maskgen sample` use: "ema" or "params"
    config.optimizer = ml_collections.ConfigDict(dict(
        lr=1e-3, b1=0.9, b2=0.95, weight_decay=0.05, warmup_steps=100, min_lr_ratio=0.0, grad_clip_norm=1.0,
    ))
    config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    config.sharding_rules = DEFAULT_SHARDING_RULES
    config.log_every = 50
    config.checkpoint_every = 500
    config.keep_checkpoints = 3
    config.evals = ml_collections.ConfigDict()
    return config
