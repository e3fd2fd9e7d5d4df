"""A frozen copy of any trained run, for use inside another recipe's jitted loss or generate.

REPA (Yu et al., arXiv 2410.06940) aligns a diffusion model to a frozen encoder run, MaskGCT
(Wang et al., arXiv 2409.00750) tokenizes its training audio with a frozen semantic tokenizer and
a frozen codec, MAGNeT (Ziv et al., arXiv 2401.04577) rescores with a frozen AR model. All of them
need the same thing: another run's recipe and weights, restored once on the host and then called
as a pure function of constants inside the caller's traced step. `maskgen.recipes.mae.
load_encoder_features` did this for MAE runs only; `load_frozen_run` does it for any recipe.

    codec = load_frozen_run(workdir, role="config.maskgct.codec_workdir", recipes=("codec",),
                            capability="encode")
    def loss(self, model, batch, rng, step):
        codes = codec.call("encode", {"audio": batch["audio"]})  # int32 [B, frames, K], no gradient

The weights are the run's `config.eval_params` choice ("ema" or "params"), restored as a
single-device copy (no mesh: the caller's jit places them), and `module()` wraps them in
`jax.lax.stop_gradient`, so nothing flows back into them. Only the model's arrays are read from
the checkpoint; the optimizer state is never built.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
from flax import nnx

from maskgen.recipes.base import CAPABILITIES, Recipe, get_recipe, recipe_names, recipes_with


@dataclasses.dataclass
class FrozenRun:
    """A restored run: its config, data shapes, recipe (`recipe.info()` in `info`) and weights.

    `module()` and `call()` are meant to run while tracing (inside jit); outside it they run eagerly.
    """

    workdir: str
    config: ml_collections.ConfigDict
    data_info: dict
    recipe: Recipe
    info: dict
    step: int
    graphdef: Any
    params: Any
    model_state: Any

    def module(self) -> nnx.Module:
        """The run's NNX model with its weights behind stop_gradient (a fresh merge per call: call it
        inside the traced function, so the weights become constants of that trace)."""
        return nnx.merge(self.graphdef, jax.lax.stop_gradient(self.params), self.model_state)

    def call(self, method: str, batch: dict, rng: jax.Array | None = None, **kwargs):
        """`recipe.<method>(module(), batch, rng, **kwargs)`, e.g. call("encode", {"audio": x})."""
        fn = getattr(self.recipe, method, None)
        provides = {m for c, m in CAPABILITIES.items() if c in type(self.recipe).capabilities}
        # A capability method the recipe does not declare is the base class's NotImplementedError.
        if not callable(fn) or (method in set(CAPABILITIES.values()) and method not in provides):
            raise ValueError(f"the frozen {self.config.recipe!r} run in {self.workdir} has no method {method!r}")
        return fn(self.module(), batch, rng if rng is not None else jax.random.key(0), **kwargs)


def _problem(role: str, workdir: str, what: str) -> ValueError:
    return ValueError(f"{role}={workdir!r}: {what}")


def load_frozen_run(workdir: str, *, role: str, recipes: tuple[str, ...] | None = None,
                    capability: str | None = None, step: int | None = None) -> FrozenRun:
    """Restores the run in `workdir` as a FrozenRun (see the module docstring).

    role: the config key that named the run, used in every error (e.g. "config.maskgct.codec_workdir").
    recipes: the recipe names accepted (None: any). capability: one the recipe must declare in its
    `capabilities` (e.g. "encode"). step: a checkpoint step (None: the newest readable one).
    Errors (ValueError naming role and workdir): not a directory, no config.json or checkpoint there,
    a recipe not in `recipes`, a recipe without `capability`.
    """
    from maskgen.checkpoint import load_run_config, restore_run_model
    from maskgen.data import data_options, source_info
    from maskgen.data.run_info import load_run_data_info

    workdir = str(workdir)
    if not workdir or not os.path.isdir(workdir):
        raise _problem(role, workdir, "is not a directory (it must name a trained maskgen run)")
    if not os.path.exists(os.path.join(workdir, "config.json")):
        raise _problem(role, workdir, "has no config.json: it is not a maskgen run directory (train one there first)")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise _problem(role, workdir, "has no checkpoints/ directory: the run has not saved a checkpoint yet")
    config = load_run_config(workdir)
    if config.recipe not in recipe_names():
        raise _problem(role, workdir, f"is a run of the unknown recipe {config.recipe!r}")
    if recipes is not None and config.recipe not in recipes:
        raise _problem(role, workdir, f"is a {config.recipe!r} run; it must be a run of: {', '.join(recipes)}")
    recipe_cls = get_recipe(config.recipe)
    if capability is not None and capability not in recipe_cls.capabilities:
        raise _problem(role, workdir, f"is a {config.recipe!r} run, which cannot {capability!r}; runs that can: "
                                      f"{', '.join(recipes_with(capability)) or 'none'}")
    # An imported run (`maskgen import-weights`) saved its data shapes; its dataset need not be here.
    data_info = load_run_data_info(workdir) or source_info(config.data.name, config.data.data_dir or None,
                                                           data_options(config.data))
    recipe = recipe_cls.from_config(config, data_info)
    with nnx.use_eager_sharding(False):  # a frozen single-device copy: no mesh needed
        graphdef, abstract_params, abstract_rest = nnx.split(
            nnx.eval_shape(lambda: recipe.make_model(nnx.Rngs(0))), nnx.Param, ...)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def on_device(tree):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(tree))

    which = config.get("eval_params", "ema")
    try:
        restored_step, restored = restore_run_model(
            workdir, {"params": on_device(abstract_params), "model_state": on_device(abstract_rest)}, step=step,
            which=which, keep=config.get("keep_checkpoints", 3))
    except FileNotFoundError as err:
        raise _problem(role, workdir, str(err)) from None
    to_local = lambda tree: jax.tree.map(lambda x: jax.numpy.asarray(jax.device_get(x)), tree)  # noqa: E731
    return FrozenRun(workdir=workdir, config=config, data_info=data_info, recipe=recipe, info=recipe.info(),
                     step=int(restored_step), graphdef=graphdef, params=to_local(restored["params"]),
                     model_state=to_local(restored.get("model_state", {})))
