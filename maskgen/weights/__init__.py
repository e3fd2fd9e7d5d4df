"""Released weights, imported as maskgen runs: `maskgen import-weights --format F --weights FILE --workdir OUT`.

Each importer (IMPORTERS) is one module with `make_config(tree, **options)` (a complete maskgen
config whose model settings are read off the released tree's shapes), `data_info(tree, config)`
(the shapes a recipe needs, since an imported run has no dataset at hand) and
`convert(tree, config)` (the released arrays, renamed and re-laid-out into exactly the parameter
tree of the model that config builds). `import_weights` puts them together and writes a workdir
like a training run's at step 0: `config.json`, `data_info.json` and an Orbax checkpoint whose
params and EMA are the released weights (with a fresh optimizer state), so `maskgen eval`,
`sample`, `tokenize`, `edit`, a perceptual network (`mae:<workdir>`) and `init_from` all accept it.

Nothing is downloaded, and no file is unpickled: `maskgen.weights.files` reads Flax msgpack,
PyTorch zip (weights only) and safetensors files.
"""

from __future__ import annotations

import importlib
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskgen.weights.files import FORMATS, WeightFileError, read_flax_checkpoint, shape_differences, tree_shapes
from maskgen.weights.torch_files import read_safetensors, read_torch_state_dict

# --format name -> importer module, and what it reads.
IMPORTERS = {
    "mae": ("maskgen.weights.mae_torch", "facebookresearch/mae or timm ViT-MAE state dicts (.pth, .safetensors)"),
    "maskgit_transformer": ("maskgen.weights.maskgit_transformer", "google-research/maskgit transformer checkpoints"),
    "maskgit_vqgan": ("maskgen.weights.maskgit_vqgan", "google-research/maskgit VQGAN tokenizer checkpoints"),
}


def read_weights(path: str) -> dict:
    """Any weight file maskgen loads, chosen by content (a zip archive is a PyTorch file, so a renamed
    file still reads): PyTorch zip (weights only), safetensors (by its name), or Flax msgpack."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    if zipfile.is_zipfile(path):
        return read_torch_state_dict(path)
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    try:
        return read_flax_checkpoint(path)
    except WeightFileError as err:
        raise WeightFileError(f"{err}; maskgen reads {FORMATS}") from None


def importer(name: str):
    if name not in IMPORTERS:
        raise ValueError(f"unknown weights format {name!r}; valid: "
                         + "; ".join(f"{k} ({why})" for k, (_, why) in IMPORTERS.items()))
    return importlib.import_module(IMPORTERS[name][0])


def check_same_tree(converted: dict, expected: dict, what: str) -> None:
    """Raises ValueError naming every parameter the converted tree lacks, adds, or shapes differently."""
    differences = shape_differences(tree_shapes(converted), tree_shapes(expected))
    if differences:
        raise ValueError(f"{what} does not fit the model its config builds: {differences}")


def import_weights(fmt: str, weights_path: str, workdir: str, options: dict | None = None,
                   overrides=()) -> dict:
    """Converts a released weights file into a maskgen run in `workdir` (see the module docstring).

    `options` go to the importer's `make_config` (e.g. num_heads), except `tokenizer`: the workdir of
    the tokenizer run whose tokens the imported model reads (so its samples decode to images);
    `overrides` are `key=value`
    config overrides applied after it (e.g. `data.data_dir=...` for later evaluation).
    Returns a summary dict (format, parameters, workdir).
    """
    from maskgen.config import apply_overrides, config_to_json
    from maskgen.checkpoint import Checkpointer
    from maskgen.data.run_info import save_run_data_info
    from maskgen.runs import setup
    from maskgen.train import _state_initializer, check_workdir, make_optimizer

    module = importer(fmt)
    options = dict(options or {})
    # Any token model: the tokenizer run that decodes its tokens (e.g. an imported VQGAN).
    tokenizer = str(options.pop("tokenizer", "") or "")
    if tokenizer and not os.path.exists(os.path.join(tokenizer, "config.json")):
        raise FileNotFoundError(f"--option tokenizer={tokenizer}: not a maskgen run (no config.json); import or "
                                "train the tokenizer first")
    tree = module.read(weights_path) if hasattr(module, "read") else read_weights(weights_path)
    config = module.make_config(tree, **options)
    apply_overrides(config, overrides)
    info = module.data_info(tree, config)
    if tokenizer:
        info["tokenizer"] = {"workdir": os.path.abspath(tokenizer)}
    converted = module.convert(tree, config)

    check_workdir(workdir)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints, async_save=False)
    if checkpointer.all_steps():
        checkpointer.close()
        raise ValueError(f"--workdir {workdir} already holds checkpoints {checkpointer.all_steps()}; "
                         "import into a new directory")
    run = setup(config, info)
    with run.context():
        abstract = nnx.eval_shape(lambda: run.recipe.make_model(nnx.Rngs(0)))
    _, abstract_params, _ = nnx.split(abstract, nnx.Param, ...)
    check_same_tree(converted, nnx.to_pure_dict(abstract_params), f"the converted {fmt} weights")

    tx, _ = make_optimizer(config.optimizer, config.total_steps, *run.recipe.optimizer_groups())
    jit_init, _, (state_sh, ema_sh) = _state_initializer(run, tx)
    with run.context():
        state, _ = jit_init(jax.random.key(config.seed))
    params = jax.tree.map(lambda like, value: jax.device_put(jnp.asarray(value, like.dtype), like.sharding),
                          state["params"], converted)
    state = {**state, "params": params, "opt_state": tx.init(params)}
    state = jax.device_put(state, state_sh)
    checkpointer.save(0, state=state, ema=params, data_iterator=None, config_json=config.to_dict())
    checkpointer.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_to_json(config))
    save_run_data_info(workdir, info)
    count = int(sum(np.size(x) for x in jax.tree.leaves(converted)))
    return {"format": fmt, "weights": weights_path, "workdir": workdir, "recipe": config.recipe, "parameters": count}


__all__ = ["IMPORTERS", "check_same_tree", "import_weights", "importer", "read_weights"]
