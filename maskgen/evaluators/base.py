"""The evaluator interface and registry."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Iterator

import jax
import numpy as np

_TYPES: dict[str, type] = {}


def register(name: str):
    def decorate(cls):
        _TYPES[name] = cls
        return cls

    return decorate


def evaluator_types() -> list[str]:
    return sorted(_TYPES)


def build_evaluator(name: str, spec: dict[str, Any]):
    """Builds the evaluator `config.evals[name]`; unknown types or arguments name the valid ones."""
    spec = dict(spec)
    kind = spec.pop("type")
    spec.pop("every")
    if kind not in _TYPES:
        raise ValueError(f"config.evals.{name}: unknown evaluator type {kind!r}; known: {', '.join(evaluator_types())}")
    cls = _TYPES[kind]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(spec) - accepted
    if unknown:
        raise ValueError(
            f"config.evals.{name} ({kind}): unknown argument(s) {sorted(unknown)}; valid: {sorted(accepted)}"
        )
    # An evaluator declares what its arguments may be as ARG_RULES (maskgen.config rules).
    problems = [rule.problem(f"config.evals.{name}.{key}", spec[key])
                for key, rule in getattr(cls, "ARG_RULES", {}).items() if key in spec]
    if any(problems):
        raise ValueError("; ".join(p for p in problems if p))
    return cls(**spec)


@dataclasses.dataclass
class EvalResult:
    """What an evaluator reports; the loop writes each kind with one writer (maskgen.outputs):
    scalars to metrics.jsonl and TensorBoard, images as PNG, audio as WAV, texts as TXT (and each
    to TensorBoard)."""

    scalars: dict[str, float] = dataclasses.field(default_factory=dict)
    images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # uint8 [H, W, C]
    audio: dict[str, tuple[np.ndarray, int]] = dataclasses.field(default_factory=dict)  # (float [T, C] in [-1, 1], rate)
    texts: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EvalContext:
    """What an evaluator may use.

    apply(method, params, batch, rng, **static): runs the recipe's `method` (e.g. "features",
      "sample") on a global batch under jit and returns its output (global arrays); keyword
      arguments are static settings passed on to the method (one compilation per value).
    params: the model variables to evaluate (opaque: pass them to `apply`).
    init_params(seed): freshly initialised variables of the same model, for random-init baselines.
    batches(split, limit): yields `(global_batch, valid)` over a split in order; `valid` is a bool
      numpy array over the global batch rows (False on padding).
    to_host(tree): fetches global arrays as numpy on every process.
    info: facts the recipe publishes for evaluators (e.g. {"codebook_size": 1024}).
    workdir: the run's directory (evaluators may cache things under it), or "" if none.
    shard(batch): a host batch that every process holds in full -> a global batch for `apply`;
      its row count must be a multiple of `batch_multiple` (the data-parallel device count).
    decode(tokens): the run's token outputs -> what they stand for: {"images": float [n, H, W, C]
      in [-1, 1]} through the tokenizer run that made a token dataset, or {"texts": [str]} for
      text; raises ValueError for data that needs no decoding.
    reference(split, limit): the data the decoded outputs are compared with, as host model inputs
      (e.g. {"image", "label"} of the tokenizer's dataset).
    open_run(workdir): another trained run, restored (e.g. an AR model that scores samples):
      `.info`, `.config`, `.can(capability)`, `.apply(method, host_batch, rng, **static)`.
    method(name, **static): the recipe's `name` as a pure, un-jitted function
      `(variables, batch, rng) -> output` (the model is rebuilt from `variables` inside), for
      evaluators that jit and differentiate their own steps (e.g. fine-tuning: `jax.grad` with
      respect to `variables["params"]`, the trainable nnx.Param values; `variables["model_state"]`
      holds the rest). Raises ValueError when the recipe has no such method.
    """

    step: int
    params: Any
    apply: Callable[..., Any]
    init_params: Callable[[int], Any]
    batches: Callable[[str, int | None], Iterator[tuple[dict[str, jax.Array], np.ndarray]]]
    to_host: Callable[[Any], Any]
    rng: jax.Array
    info: dict = dataclasses.field(default_factory=dict)
    workdir: str = ""
    shard: Callable[[dict], dict] | None = None
    batch_multiple: int = 1
    decode: Callable[[np.ndarray], dict] | None = None
    reference: Callable[..., dict] | None = None
    open_run: Callable[[str], Any] | None = None
    method: Callable[..., Callable[[Any, Any, jax.Array], Any]] | None = None
