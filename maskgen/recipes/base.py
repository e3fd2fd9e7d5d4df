"""The recipe interface that the one training loop uses, and the registry of recipes."""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

_REGISTRY: dict[str, type["Recipe"]] = {}


def register(name: str) -> Callable[[type["Recipe"]], type["Recipe"]]:
    def decorate(cls):
        if name in _REGISTRY:
            raise ValueError(f"recipe {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def recipe_names() -> list[str]:
    return sorted(_REGISTRY)


def recipes_with(capability: str) -> list[str]:
    """The registered recipes that declare `capability` (for messages: "sampling needs one of ...")."""
    return sorted(name for name, cls in _REGISTRY.items() if capability in cls.capabilities)


def get_recipe(name: str) -> type["Recipe"]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown recipe {name!r}; registered recipes: {', '.join(recipe_names())}")
    return _REGISTRY[name]


class Recipe:
    """What the loop needs from a paper. Subclasses implement the methods below.

    Methods taking `model` receive the NNX module rebuilt inside a jitted function from the
    (graphdef, params) pair; they must be pure (randomness only from `rng`).
    """

    name: str = ""
    # What callers outside the loop may ask of a recipe, so they never compare recipe names. Each
    # capability is a method below, with the batch it takes and what it returns (CAPABILITIES).
    capabilities: frozenset = frozenset()
    # The decoding settings `generate` reads (None: all of `config.sampling`); others are ignored.
    decode_options: tuple | None = None

    def supported_tasks(self) -> frozenset:
        """The conditioning/editing tasks `generate` serves (maskgen.tasks: "none", "class",
        "prefix", "infill"); it may depend on the config (a class-conditioned model needs labels)."""
        return frozenset()

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> "Recipe":
        """Reads what the recipe needs from the config and the dataset's shapes (explicit args)."""
        raise NotImplementedError

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        """Returns human-readable problems with recipe-specific settings (empty if none)."""
        return []

    def info(self) -> dict[str, Any]:
        """Facts evaluators may need (e.g. codebook size), passed as `EvalContext.info`."""
        return {}

    def optimizer_groups(self) -> tuple[Callable | None, dict[str, dict]]:
        """Optional parameter groups with their own optimizer settings.

        Returns `(param_labels, overrides)`: `param_labels(params)` gives each parameter a group
        name ("default" for the base settings), and `overrides[group]` updates `config.optimizer`
        for that group. `(None, {})` means one optimizer for everything.
        """
        return None, {}

    def make_model(self, rngs: nnx.Rngs) -> nnx.Module:
        raise NotImplementedError

    def loss(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array,
             step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar training loss and a dict of scalar metrics. `step` (int32 scalar, the number of
        updates done) lets a loss switch terms on at a step (e.g. a GAN loss).

        The model may update variables in place: non-Param state (EMA statistics, counters) and
        Param resets (k-means codebook init, dead-code restarts). The loop keeps those updates and
        applies the gradient step on top of the reset values.
        """
        raise NotImplementedError

    def sample(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> dict[str, jax.Array]:
        """Named image rows [B, H, W, C] in [-1, 1] for a grid (e.g. original/masked/reconstruction)."""
        raise NotImplementedError

    # ---- Capabilities: each is declared in `capabilities` by the recipes that implement it.
    def features(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> jax.Array:
        """"features": per-example representation [B, D], for linear probes."""
        raise NotImplementedError

    def generate(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array, **settings) -> dict:
        """"generate" / "infill": a task batch (maskgen.tasks: "tokens" and "known" [B, *token_shape],
        "label" [B] for the class task) -> {"tokens" [B, *token_shape], optionally "trajectory",
        "masks", "nfe"}. Known tokens never change. `settings` are the decoding settings."""
        raise NotImplementedError

    def reconstruct(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> dict:
        """"reconstruct": {"image" [B, H, W, C]} -> {"reconstruction" [B, H, W, C] in [-1, 1], "codes"}."""
        raise NotImplementedError

    def encode(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> jax.Array:
        """"encode": {"image" [B, H, W, C]} -> int32 codes [B, *token_shape]."""
        raise NotImplementedError

    def decode(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> jax.Array:
        """"decode": {"codes" [B, *token_shape]} -> images [B, H, W, C]."""
        raise NotImplementedError

    def log_likelihood(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> dict:
        """"likelihood": {"tokens" [B, *token_shape]} -> {"nll" [B] (nats, summed over tokens; an upper
        bound for ELBO models), "num_tokens" [B]}."""
        raise NotImplementedError


# Each capability, the method that provides it, and what it takes and returns (see the methods).
CAPABILITIES = {
    "features": "features",
    "generate": "generate",
    "infill": "generate",
    "reconstruct": "reconstruct",
    "encode": "encode",
    "decode": "decode",
    "likelihood": "log_likelihood",
}


def check_capabilities(cls: type[Recipe]) -> None:
    """A recipe's declared capabilities must be known and implemented (a test runs this on all)."""
    unknown = set(cls.capabilities) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"recipe {cls.name!r} declares unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
    for capability in cls.capabilities:
        method = CAPABILITIES[capability]
        if getattr(cls, method) is getattr(Recipe, method):
            raise ValueError(f"recipe {cls.name!r} declares {capability!r} but does not implement {method}()")
