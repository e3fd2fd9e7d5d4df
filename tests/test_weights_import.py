"""Imported weights become ordinary runs: `maskgen.weights.import_weights` and `config.init_from`.

The format-specific converters have their own tests (test_mae_weights, test_maskgit_weights,
test_vqgan_weights); here a stand-in importer checks the shared path: the run it writes restores
to exactly the converted arrays, through the same code every command uses, and a converted tree
that does not fit the model is refused with the parameter named.
"""

import sys
import types

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_mae_config


def _fake_importer(config, converted):
    from maskgen.data import source_info

    module = types.ModuleType("fake_importer")
    module.read = lambda path: {"weights": path}
    module.make_config = lambda tree, **options: config
    module.data_info = lambda tree, cfg: source_info("digits", None, {})
    module.convert = lambda tree, cfg: converted
    return module


def _model_params(config, seed: int) -> dict:
    from maskgen.runs import setup

    run = setup(config)
    with run.context():
        model = run.recipe.make_model(nnx.Rngs(seed))
    _, params, _ = nnx.split(model, nnx.Param, ...)
    return jax.tree.map(np.asarray, nnx.to_pure_dict(params))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A tiny MAE written by import_weights from arrays drawn with another seed than any run's."""
    from maskgen import weights

    config = tiny_mae_config()
    converted = _model_params(config, seed=123)
    sys.modules["fake_importer"] = _fake_importer(config, converted)
    weights.IMPORTERS["fake"] = ("fake_importer", "a stand-in for tests")
    workdir = str(tmp_path_factory.mktemp("imported"))
    summary = weights.import_weights("fake", "released.pth", workdir)
    yield workdir, converted, summary
    weights.IMPORTERS.pop("fake")
    sys.modules.pop("fake_importer")


def test_an_imported_run_restores_to_the_converted_arrays(imported):
    from maskgen.runs import RunHandle

    workdir, converted, summary = imported
    assert summary["recipe"] == "mae" and summary["parameters"] == sum(a.size for a in jax.tree.leaves(converted))
    for which in ("ema", "params"):
        handle = RunHandle(workdir, which=which)
        assert handle.step == 0
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, handle.variables["params"]), converted)
    features = handle.apply("features", {"image": np.zeros((3, 16, 16, 1), np.float32)})
    assert np.all(np.isfinite(features))


def test_a_converted_tree_that_does_not_fit_is_refused_by_name(tmp_path):
    from maskgen import weights

    config = tiny_mae_config()
    converted = _model_params(config, seed=1)
    del converted["encoder"]["cls_token"]
    converted["decoder_pred"]["kernel"] = converted["decoder_pred"]["kernel"][:, :3]
    sys.modules["misfit_importer"] = _fake_importer(config, converted)
    weights.IMPORTERS["misfit"] = ("misfit_importer", "a stand-in for tests")
    try:
        with pytest.raises(ValueError, match=r"missing encoder/cls_token.*decoder_pred/kernel is \(\d+, 3\), expected"):
            weights.import_weights("misfit", "released.pth", str(tmp_path / "run"))
    finally:
        weights.IMPORTERS.pop("misfit")
        sys.modules.pop("misfit_importer")
    with pytest.raises(ValueError, match="unknown weights format 'nope'; valid: mae"):
        weights.importer("nope")


def test_init_from_starts_a_new_run_from_another_runs_weights(imported, tmp_path):
    from maskgen.config import ConfigError
    from maskgen.runs import RunHandle
    from maskgen.train import train

    source, converted, _ = imported
    # One step at a negligible learning rate: the new run's weights are still the source's.
    config = tiny_mae_config("total_steps=1", "optimizer.lr=1e-12", "optimizer.warmup_steps=0",
                             f"init_from={source}")
    train(config, str(tmp_path / "finetune"))
    params = jax.tree.map(np.asarray, RunHandle(str(tmp_path / "finetune"), which="params").variables["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params, converted)
    fresh = _model_params(tiny_mae_config(), seed=0)
    assert not np.allclose(params["encoder"]["cls_token"], fresh["encoder"]["cls_token"])

    wider = tiny_mae_config(f"init_from={source}", "model.decoder_width=24")
    with pytest.raises(ConfigError, match="config.init_from=.*do not fit this config's model"):
        train(wider, str(tmp_path / "wider"))


@pytest.mark.slow
def test_imported_maskgit_and_vqgan_sample_images_end_to_end(tmp_path):
    """The official VQGAN and transformer layouts (random values), imported and linked with
    `--option tokenizer=`, sample images through `maskgen sample` like any run."""
    import jax.numpy as jnp
    from PIL import Image

    import test_maskgit_weights as official_transformer
    import test_vqgan_weights as official_vqgan
    from conftest import run_cli
    from maskgen.weights import import_weights
    from maskgen.weights.files import write_flax_checkpoint

    images01 = np.zeros((1, official_vqgan.SIZE, official_vqgan.SIZE, 3), np.float32)
    variables = jax.jit(official_vqgan.RefVQVAE().init)(jax.random.key(0), jnp.asarray(images01))
    write_flax_checkpoint(str(tmp_path / "vqgan.ckpt"),
                          {"params": official_vqgan._randomise(jax.tree.map(np.asarray, dict(variables["params"])), 2)})
    import_weights("maskgit_vqgan", str(tmp_path / "vqgan.ckpt"), str(tmp_path / "vqgan"),
                   {"image_size": official_vqgan.SIZE})
    # A transformer over the VQGAN's 16 codes on its 4 x 4 grid (8 px, one 2x downsampling).
    module = official_transformer
    saved = module.CODEBOOK, module.GRID, module.VOCAB, module.N
    module.CODEBOOK, module.GRID = official_vqgan.CODES, (4, 4)
    module.VOCAB, module.N = module.CODEBOOK + module.CLASSES + 1, 16
    try:
        write_flax_checkpoint(str(tmp_path / "maskgit.ckpt"), module.official_tree())
    finally:
        module.CODEBOOK, module.GRID, module.VOCAB, module.N = saved
    import_weights("maskgit_transformer", str(tmp_path / "maskgit.ckpt"), str(tmp_path / "maskgit"),
                   {"num_classes": module.CLASSES, "tokenizer": str(tmp_path / "vqgan")}, ["compute_dtype=float32"])
    out = tmp_path / "samples.png"
    result = run_cli("sample", "--workdir", str(tmp_path / "maskgit"), "--num", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    grid = np.asarray(Image.open(out))
    assert grid.shape[0] >= module.CLASSES * official_vqgan.SIZE and grid.std() > 0  # a row of images per class
