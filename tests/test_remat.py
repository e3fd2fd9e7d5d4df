"""Rematerialisation and block-boundary sharding constraints: same numbers, less memory."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.models.token_transformer import TokenTransformer


def _loss_and_grad(remat, batch=16, depth=3):
    mesh = parallel.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        model = TokenTransformer(vocab_size=64, token_shape=(8, 8), num_classes=4, width=64, depth=depth,
                                 num_heads=4, remat=remat, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 65, (batch, 64)), jnp.int32)
    labels = jnp.arange(batch, dtype=jnp.int32) % 5

    def loss(p):
        logits = nnx.merge(graphdef, p)(tokens, labels)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

    with jax.set_mesh(mesh):
        fn = jax.value_and_grad(loss)
        jaxpr = str(jax.make_jaxpr(loss)(params))
        value, grads = jax.jit(fn)(params)
    return value, grads, len(re.findall(r"\b(?:checkpoint|remat2?)\[", jaxpr))


def test_remat_wraps_every_block_and_keeps_the_gradients():
    """Memory is not asserted here: XLA:CPU's buffer assignment does not turn rematerialisation
    into a smaller peak (measured: `benchmarks`/docs/sharding.md); TPU and GPU do."""
    value, grads, rematted = _loss_and_grad("none")
    assert rematted == 0
    for policy in ("block", "block_save_dots"):
        v, g, rematted = _loss_and_grad(policy)
        assert rematted == 3  # one rematerialised region per block
        assert float(v) == pytest.approx(float(value), rel=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, grads)


def test_unknown_remat_policy_is_named():
    with pytest.raises(ValueError, match="unknown remat policy 'everything'"):
        TokenTransformer(vocab_size=8, token_shape=(2, 2), num_classes=2, width=8, depth=1, num_heads=2,
                         remat="everything", rngs=nnx.Rngs(0))


def test_constrain_maps_logical_axes_and_is_a_noop_without_a_mesh():
    x = jnp.ones((8, 4, 6))
    assert parallel.constrain(x) is x  # no mesh, no rules: eager code is untouched
    mesh = parallel.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        text = jax.jit(parallel.constrain).lower(x).as_text()
    assert "sharding" in text  # a sharding constraint was emitted


def test_inspect_prints_where_parameters_live():
    from conftest import REPO, run_cli

    result = run_cli("inspect", "--config", f"{REPO}/experiments/maskgit_imagenet256.py:size=tiny", "--devices", "8",
                     '--config.mesh=(("data",2),("fsdp",2),("tensor",2))')
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2} (8 devices)" in out
    line = next(l for l in out.splitlines() if l.startswith("blocks/0/mlp/fc1/kernel"))
    assert "(embed, mlp)" in line and "(fsdp, tensor)" in line
    assert "parameters" in out and "per device" in out
