"""Experiment configs: load `experiments/*.py:arg`, apply `--config.x=y` overrides, validate, lock.

A config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`. The returned
config is locked before overrides are applied, so a mistyped key or a value of the wrong type is
an error that names the key and lists the valid ones, raised before anything heavy runs.

What each value may be is declared once, as a table `key -> Rule` next to where the keys are
declared: `COMMON_SPEC` here (the keys `base_config` and every experiment's `data` share), and a
`CONFIG_SPEC` beside each recipe's `validate` (its `model`, `loss`, `sampling` keys). `check_spec`
checks a table and returns every problem as "config.optimizer.lr=-1.0: must be a number > 0";
cross-key checks (patch size divides image size) run only on keys that passed. The arguments of
an experiment file (`:size=tiny,steps=50`) are declared the same way, as `Arg`s for
`parse_config_arg`, which refuses unknown arguments and values outside their choices.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import math
import numbers
import os
import traceback
from typing import Any, Callable, Iterable, Sequence

import ml_collections


class ConfigError(ValueError):
    """A config file, override or combination of settings that cannot run."""


# --------------------------------------------------------------------------------------------
# Rules: what a config value (or an experiment argument) may be, declared once per key.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rule:
    """A value is valid when `test(value)` is true; `allowed` says what that means in words."""

    allowed: str  # completes "must be ...", e.g. "an int >= 1"
    test: Callable[[Any], bool]
    optional: bool = False  # the key may be absent (older configs, recipe-specific groups)

    def problem(self, name: str, value: Any) -> str | None:
        """`"{name}={value}: must be {allowed}"`, or None if the value is valid."""
        try:
            valid = bool(self.test(value))
        except (TypeError, ValueError, ArithmeticError):
            valid = False
        return None if valid else f"{name}={_show(value)}: must be {self.allowed}"


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> tuple[Callable[[Any], bool], str]:
    def inside(v):
        return ((lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))

    if lo is not None and hi is not None:
        words = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        words = f"{'>' if lo_open else '>='} {lo}"
    elif hi is not None:
        words = f"{'<' if hi_open else '<='} {hi}"
    else:
        words = ""
    return inside, words


def integer(min: int | None = None, max: int | None = None, *, why: str = "", optional: bool = False) -> Rule:
    """An int (not a bool) in [min, max]; `why` is appended to the message in parentheses."""
    inside, words = _bounds(min, max, False, False)
    return Rule(f"an int {words}".rstrip() + (f" ({why})" if why else ""),
                lambda v: _is_int(v) and inside(v), optional)


def number(min: float | None = None, max: float | None = None, *, min_open: bool = False,
           max_open: bool = False, why: str = "", optional: bool = False) -> Rule:
    """A finite int or float (not a bool) in the given interval."""
    inside, words = _bounds(min, max, min_open, max_open)
    return Rule(f"a number {words}".rstrip() + (f" ({why})" if why else ""),
                lambda v: _is_real(v) and inside(v), optional)


def one_of(*choices: Any, optional: bool = False) -> Rule:
    return Rule("one of " + ", ".join(_show(c) for c in choices),
                lambda v: not isinstance(v, bool) and v in choices, optional)


def or_none(rule: Rule) -> Rule:
    """`rule`, or None (e.g. `max_examples=None`: no limit)."""
    return Rule(f"{rule.allowed} or None", lambda v: v is None or rule.test(v), rule.optional)


def boolean(optional: bool = False) -> Rule:
    return Rule("True or False", lambda v: isinstance(v, bool), optional)


def string(*, nonempty: bool = False, why: str = "", optional: bool = False) -> Rule:
    words = "a non-empty string" if nonempty else "a string"
    return Rule(words + (f" ({why})" if why else ""), lambda v: isinstance(v, str) and (v or not nonempty), optional)


def int_tuple(min: int | None = None, *, length: int | None = None, why: str = "", optional: bool = False) -> Rule:
    """A non-empty tuple of ints (each >= min), of exactly `length` items if given."""
    inside, words = _bounds(min, None, False, False)
    size = f"a tuple of {length}" if length else "a non-empty tuple of"
    return Rule(f"{size} ints {words}".rstrip() + (f" ({why})" if why else ""),
                lambda v: (isinstance(v, (tuple, list)) and len(v) > 0 and (length is None or len(v) == length)
                           and all(_is_int(x) and inside(x) for x in v)), optional)


def _axis_pairs(value: Any, size_ok: Callable[[Any], bool]) -> bool:
    return isinstance(value, (tuple, list)) and all(
        isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str) and size_ok(p[1]) for p in value)


class Problems(list):
    """The problems found so far (strings), and which keys they were about (for `ok`)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.bad_keys: set[str] = set()

    def add(self, key: str, message: str) -> None:
        self.bad_keys.add(key)
        self.append(message)

    def ok(self, *keys: str) -> bool:
        """True if none of `keys` (dotted, without `config.`) had a problem: safe to combine them."""
        return not any(k in self.bad_keys for k in keys)


_MISSING = object()


def _values(config: ml_collections.ConfigDict, key: str) -> list[tuple[str, Any]]:
    """`(dotted key, value)` for a spec key; `*` matches every key of a group; absent -> _MISSING."""
    nodes = [("", config)]
    for part in key.split("."):
        nxt = []
        for where, node in nodes:
            if not isinstance(node, ml_collections.ConfigDict):
                nxt.append((f"{where}{part}", _MISSING))
            elif part == "*":
                nxt.extend((f"{where}{k}", node[k]) for k in node.keys())
            else:
                nxt.append((f"{where}{part}", node[part] if part in node else _MISSING))
        nodes = [(f"{w}.", n) for w, n in nxt]
    return [(w[:-1], n) for w, n in nodes]


def check_spec(config: ml_collections.ConfigDict, spec: dict[str, Rule],
               problems: Problems | None = None) -> Problems:
    """Checks every `key -> Rule` of `spec` against `config`; returns (and extends) `problems`."""
    problems = Problems() if problems is None else problems
    for key, rule in spec.items():
        for dotted, value in _values(config, key):
            if value is _MISSING:
                if not rule.optional:
                    problems.add(dotted, f"config.{dotted} is missing: it must be {rule.allowed}")
                continue
            message = rule.problem(f"config.{dotted}", value)
            if message:
                problems.add(dotted, message)
    return problems


# --------------------------------------------------------------------------------------------
# Experiment-file arguments: `experiments/x.py:size=tiny,steps=50`.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Arg:
    """One argument an experiment file accepts. `rule=None` takes any text (e.g. a directory);
    otherwise the value is parsed as a Python literal (text for rules whose choices are strings)."""

    default: Any
    help: str
    rule: Rule | None = None
    text: bool = False  # keep the value as the text given (choices that are names)


def choice(default: str, help: str, *choices: str) -> Arg:
    """An argument naming one of `choices` (kept as text, so `size=B` is the string "B")."""
    return Arg(default, help, one_of(*choices), text=True)


def flag(default: int, help: str) -> Arg:
    """A 0/1 switch; a bare `name` (no `=`) or `name=true` means 1."""
    return Arg(default, help, Rule("0 or 1", lambda v: v in (0, 1)))


def _describe_args(args: dict[str, Arg]) -> str:
    lines = []
    for name, a in args.items():
        allowed = "any text" if a.rule is None else a.rule.allowed
        default = "" if a.default is None else f"; default {_show(a.default)}"
        lines.append(f"  {name}: {a.help} ({allowed}{default})")
    return "\n".join(lines)


def parse_config_arg(arg_string: str | None, args: dict[str, Arg] | None = None) -> dict[str, Any]:
    """Parses big_vision-style `"size=S,runlocal=True"` into a dict of Python values.

    With `args` (the file's declared arguments), an unknown name or a value its rule refuses
    raises ConfigError naming the valid arguments, and missing arguments take their defaults.
    """
    out: dict[str, Any] = {}
    for part in (arg_string or "").split(","):
        if not part:
            continue
        key, has_value, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        declared = (args or {}).get(key)
        if args is not None and declared is None:
            close = difflib.get_close_matches(key, list(args), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown argument {key!r}.{hint} Valid arguments:\n{_describe_args(args)}")
        if not has_value:
            out[key] = True
        elif declared is not None and (declared.rule is None or declared.text):
            out[key] = raw
        else:
            out[key] = _parse_value(raw)
    if args is None:
        return out
    for key, value in out.items():
        rule = args[key].rule
        message = rule.problem(f"argument {key}", value) if rule is not None else None
        if message:
            raise ConfigError(f"{message}. Valid arguments:\n{_describe_args(args)}")
    return {**{k: a.default for k, a in args.items()}, **out}


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`, and locks the result.

    A syntax error, an exception in the file or a refused argument is a ConfigError that names
    the file (and the line in it), not a traceback through maskgen.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path!r}")
    if not path.endswith(".py"):
        saved = (" A run's saved config.json is read by leaving out --config: `maskgen eval --workdir DIR` "
                 "uses DIR/config.json." if path.endswith(".json") else "")
        raise ConfigError(f"{path}: a config file is a Python file (.py) with get_config(arg).{saved}")
    module_spec = importlib.util.spec_from_file_location(
        "maskgen_config_" + os.path.basename(path).removesuffix(".py"), path
    )
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"{path} has no get_config(arg) function")
        config = module.get_config(arg or None)
    except ConfigError as err:
        raise ConfigError(str(err) if str(err).startswith(path) else f"{spec}: {err}") from None
    except SyntaxError as err:
        if os.path.abspath(err.filename or "") == os.path.abspath(path):
            raise ConfigError(_located(path, err.lineno, err.text, f"SyntaxError: {err.msg}")) from None
        raise ConfigError(_file_error(path, err)) from None
    except Exception as err:  # noqa: BLE001 - any error in user code becomes a message about that code
        raise ConfigError(_file_error(path, err)) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict")
    config.lock()
    return config


def _located(path: str, lineno: int | None, line: str | None, what: str) -> str:
    source = (line or "").strip()
    return f"{path}:{lineno or '?'}: {what}" + (f"\n    {source}" if source else "")


def _file_error(path: str, err: BaseException) -> str:
    """`path:line: Type: message` and the source line, for the deepest traceback frame in `path`."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    frame = frames[-1] if frames else None
    return _located(path, frame and frame.lineno, frame and frame.line, f"{type(err).__name__}: {err}")


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
        if isinstance(value, bool) != isinstance(current, bool) and isinstance(current, (bool, int, float)):
            # ml_collections takes True for an int or float field (bool is an int); a flag is not a count.
            raise ConfigError(
                f"--config.{override}: {where}.{leaf} expects a {type(current).__name__} "
                f"(current value {current!r}); got {value!r}"
            )
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


def validate_common(config: ml_collections.ConfigDict, num_devices: int, num_processes: int,
                    recipe_names: Sequence[str] = ()) -> None:
    """Checks the settings every recipe shares (COMMON_SPEC, then the mesh, batch and step counts
    together); recipes check their own in `Recipe.validate`. `recipe_names` are the registered
    recipes (passed in: recipes import this module, so it cannot import them). Raises one
    ConfigError listing all."""
    problems = check_spec(config, COMMON_SPEC)
    if "recipe" not in problems.bad_keys and recipe_names:
        message = one_of(*recipe_names).problem("config.recipe", config.recipe)
        if message:
            problems.add("recipe", message)
    if problems.ok("mesh", "sharding_rules"):
        try:
            sizes = mesh_shape(config.mesh, num_devices)
        except ConfigError as err:
            problems.add("mesh", str(err))
    if problems.ok("mesh", "sharding_rules"):
        for logical, physical in config.sharding_rules:
            physicals = () if physical is None else (physical,) if isinstance(physical, str) else physical
            for axis in physicals:
                if axis not in sizes:
                    problems.add("sharding_rules",
                                 f"config.sharding_rules maps {logical!r} to mesh axis {axis!r}, "
                                 f"which is not in config.mesh {tuple(sizes)}")
    if problems.ok("mesh", "sharding_rules", "batch_size"):
        data_parallel = math.prod(sizes.get(a, 1) for a in batch_axes(config.sharding_rules))
        if config.batch_size % data_parallel:
            problems.append(
                f"config.batch_size={config.batch_size} is not divisible by the {data_parallel} "
                f"data-parallel devices (mesh {sizes}, batch over {batch_axes(config.sharding_rules)})"
            )
    if problems.ok("batch_size") and config.batch_size % num_processes:
        problems.append(f"config.batch_size={config.batch_size} is not divisible by {num_processes} processes")
    if problems.ok("optimizer.warmup_steps", "total_steps") and config.optimizer.warmup_steps > config.total_steps:
        problems.append(f"config.optimizer.warmup_steps={config.optimizer.warmup_steps}: must be in "
                        f"[0, total_steps={config.total_steps}]")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _data_kinds(data_info: dict[str, Any]) -> set[str]:
    """The kinds of fields a `source_info` dict describes ("image", "tokens", "text", ...); a
    hand-written data_info without "fields" is read by its legacy keys."""
    fields = data_info.get("fields")
    if fields:
        return {spec.kind for spec in fields.values()}
    kinds = set()
    if data_info.get("image_shape") is not None:
        kinds.add("image")
    if "token_shape" in data_info:
        kinds.add("tokens")
    return kinds


# What each `needs` accepts: text ids are token ids to a token model.
_NEEDS = {"images": {"image"}, "tokens": {"tokens", "text"}, "latents": {"latents"}, "audio": {"audio"}}


def data_problems(config: ml_collections.ConfigDict, data_info: dict[str, Any], needs: str,
                  problems: Problems | None = None) -> Problems:
    """Checks config.data (and the evaluators' splits) against the dataset `source_info` describes.

    needs: what the recipe trains on: "images", "tokens" (token grids or text ids), "latents" or
    "audio". The pipeline centre-crops images to a square and resizes them (bilinearly) to
    config.data.image_size. Downsampling is what every image pipeline does; upsampling invents no
    detail, so it must be asked for: at most `config.data.max_upscale` times the stored size
    (default 1; the digits configs upsample their 8x8 scans to 16x16 on purpose, with 2). Data
    without images (a token dataset's images are the tokenizer run's size) has image_size 0.
    """
    if needs not in _NEEDS:
        raise ValueError(f"needs={needs!r}: must be one of {sorted(_NEEDS)}")
    problems = Problems() if problems is None else problems
    data, kinds = config.data, _data_kinds(data_info)
    is_text = "text" in kinds
    what = "text" if is_text else "token" if "tokens" in kinds else "non-image"
    if not kinds & _NEEDS[needs]:
        if needs == "tokens":
            problems.add("data.name", f"recipe {config.recipe!r} trains on token grids: set config.data.name='tokens' "
                                      f"and config.data.data_dir to the output of `maskgen tokenize`, or name a "
                                      f"text source (e.g. 'pydoc_text') (got data.name={data.name!r})")
        elif needs == "images":
            problems.add("data.name", f"recipe {config.recipe!r} trains on images, but config.data.name={data.name!r} "
                                      f"is a {what} dataset; use 'digits', 'array_record' or 'tfds:<name>'")
        else:
            problems.add("data.name", f"recipe {config.recipe!r} trains on {needs}, but config.data.name="
                                      f"{data.name!r} has fields of kinds {sorted(kinds)}")
        return problems
    has_images = "image" in kinds
    if not problems.ok("data.image_size"):
        pass
    elif not has_images and data.image_size != 0:
        why = ("its images are the size the tokenizer run was trained at" if what == "token"
               else "it has no images")
        problems.add("data.image_size", f"config.data.image_size={data.image_size}: must be 0 for a {what} dataset "
                                        f"({why})")
    elif has_images:
        stored = tuple(data_info.get("image_shape") or (None, None))[:2]
        side = None if None in stored else min(stored)
        max_upscale = data.get("max_upscale", 1.0)
        if data.image_size < 1:
            problems.add("data.image_size", f"config.data.image_size={data.image_size}: must be an int >= 1")
        elif side is not None and _is_real(max_upscale) and data.image_size > side * max(max_upscale, 1):
            largest = int(side * max_upscale)
            problems.add("data.image_size",
                         f"config.data.image_size={data.image_size}: the {data.name!r} images are "
                         f"{stored[0]}x{stored[1]}, so this upsamples them {data.image_size / side:g}x, more than "
                         f"config.data.max_upscale={max_upscale:g} allows (at most {largest}). Use an image_size "
                         f"<= {largest}, prepare the data at this size, or raise config.data.max_upscale if "
                         "you mean to train on upsampled images")
    if not has_images and problems.ok("data.augment") and data.augment != "none":
        problems.add("data.augment", f"config.data.augment={data.augment!r}: must be 'none' for a {what} dataset")
    if problems.ok("data.seq_len") and "seq_len" in data and not is_text:
        problems.add("data.seq_len", f"config.data.seq_len={data.seq_len}: only text sources take a seq_len; "
                                     f"{data.name!r} is a {'image' if has_images else what} dataset")
    counts = data_info.get("splits", {})
    size = counts.get(data.train_split) if problems.ok("data.train_split") else None
    if isinstance(size, int) and _is_int(config.batch_size) and config.batch_size > size:
        problems.add("batch_size", f"config.batch_size={config.batch_size}: the {data.name!r} {data.train_split!r} "
                                   f"split has only {size} examples, so no batch would ever be complete; use a "
                                   f"batch_size <= {size}")
    splits = sorted(counts)
    wanted = [("data.train_split", data.train_split)] + [
        (f"evals.{name}.{key}", spec[key]) for name, spec in config.evals.items()
        for key in ("split", "train_split", "test_split") if isinstance(spec.get(key), str)]
    for key, split in wanted:
        if problems.ok(key) and splits and split.split("[")[0] not in splits:  # tfds slices: "train[:10%]"
            problems.add(key, f"config.{key}={split!r}: the {data.name!r} dataset has no such split; "
                              f"its splits are {', '.join(map(repr, splits))}")
    return problems


def recipe_problems(config: ml_collections.ConfigDict, data_info: dict[str, Any], spec: dict[str, Rule],
                    needs: str) -> Problems:
    """What every `Recipe.validate` starts with: its CONFIG_SPEC, then the data checks."""
    return data_problems(config, data_info, needs, check_spec(config, spec))


_EVERY = "N > 0: every N steps and at the end; 0: only at the end; -1: only via `maskgen eval`"

# The keys `base_config` declares, and the `data` group every experiment file fills in.
COMMON_SPEC: dict[str, Rule] = {
    "recipe": string(nonempty=True),
    "seed": integer(min=0),
    "total_steps": integer(min=1),
    "batch_size": integer(min=1, why="global, over all devices and processes"),
    "compute_dtype": one_of("float32", "bfloat16"),
    "remat": one_of("none", "block", "block_save_dots", optional=True),
    "ema_decay": number(0, 1, max_open=True),
    "eval_params": one_of("params", "ema"),
    "init_from": string(optional=True, why="a run's workdir (e.g. from `maskgen import-weights`) whose weights "
                        "start a new run; '' starts from a random init"),
    "optimizer.lr": number(0, min_open=True),
    "optimizer.b1": number(0, 1, max_open=True),
    "optimizer.b2": number(0, 1, max_open=True),
    "optimizer.weight_decay": number(0),
    "optimizer.warmup_steps": integer(min=0, why="at most total_steps"),
    "optimizer.min_lr_ratio": number(0, 1, why="the final learning rate over the peak"),
    "optimizer.grad_clip_norm": number(0, why="0 turns clipping off"),
    "mesh": Rule("a tuple of (axis name, size) pairs, size > 0 or -1",
                 lambda v: _axis_pairs(v, lambda n: _is_int(n) and (n > 0 or n == -1))),
    "sharding_rules": Rule("a tuple of (logical axis, mesh axis or axes or None) pairs",
                           lambda v: _axis_pairs(v, lambda p: p is None or isinstance(p, (str, tuple, list)))),
    "log_every": integer(min=1),
    "checkpoint_every": integer(min=1),
    "keep_checkpoints": integer(min=1),
    "data.name": string(nonempty=True, why="a registered source: maskgen.data.source_names()"),
    "data.data_dir": string(),
    "data.image_size": integer(min=0, why="the side images are resized to; 0 for data without images"),
    "data.augment": one_of("none", "crop_flip"),  # maskgen.data.pipeline.AUGMENTATIONS (a test keeps them equal)
    "data.train_split": string(nonempty=True),
    "data.read_threads": integer(min=1, optional=True),
    "data.max_upscale": number(1, optional=True, why="how far image_size may exceed the stored images' side"),
    "data.seq_len": integer(min=2, optional=True, why="ids per example of a text source"),
    "evals.*.type": string(nonempty=True),
    "evals.*.every": integer(min=-1, why=_EVERY),
}


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
    ("expert", None),  # mixture-of-experts weights (map to an `expert` mesh axis to shard them)
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
    # A workdir whose weights (its eval weights, with its model state) start a new run instead of a
    # random init: a run trained here or one made by `maskgen import-weights`. Ignored on resume.
    config.init_from = ""
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
