"""Official MaskGIT transformer checkpoints (google-research/maskgit) into maskgen's "bert" backbone.

No checkpoint can be downloaded here, so a random tree with the official names and shapes (at a
tiny size) is written as a Flax msgpack file, read back, converted, and the maskgen model's logits
are compared with an independent NumPy transcription of the official forward pass
(maskgit/nets/maskgit_transformer.py: BERT embeddings with LayerNorm, post-LN layers, the MLM head
with the tied projection and bias; mask id -1 = the last vocabulary row, labels offset by the
codebook size and fed as the first token; the sampler keeps logits[..., 1:, :codebook]).
"""

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

CODEBOOK, CLASSES, WIDTH, HEADS, HIDDEN, DEPTH, GRID = 10, 3, 16, 2, 32, 2, (2, 3)
VOCAB = CODEBOOK + CLASSES + 1
N = math.prod(GRID)


def official_tree(seed=0):
    """{"params": ...} with the official linen names and shapes, random values (LayerNorm scales
    near 1, everything else O(0.5) so that every parameter visibly moves the logits)."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: (0.5 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    ln = lambda: {"scale": (1 + 0.2 * rng.standard_normal(WIDTH)).astype(np.float32), "bias": normal(WIDTH)}  # noqa: E731
    head_dim = WIDTH // HEADS
    params = {
        "Embed_0": {"word_embeddings": {"embedding": normal(VOCAB, WIDTH)},
                    "position_embeddings": {"embedding": normal(N + 1, WIDTH)}, "embeddings_ln": ln()},
        "MlmLayer_0": {"mlm_dense": {"kernel": normal(WIDTH, WIDTH), "bias": normal(WIDTH)}, "mlm_ln": ln(),
                       "mlm_bias": {"bias": normal(VOCAB)}},
    }
    for i in range(DEPTH):
        attn = {name: {"kernel": normal(WIDTH, HEADS, head_dim) / 2, "bias": normal(HEADS, head_dim)}
                for name in ("query", "key", "value")}
        attn["out"] = {"kernel": normal(HEADS, head_dim, WIDTH) / 2, "bias": normal(WIDTH)}
        params[f"TransformerLayer_{i}"] = {
            "Attention_0": {"self_attention": attn, "attention_output_ln": ln()},
            "Mlp_0": {"intermediate_output": {"kernel": normal(WIDTH, HIDDEN) / 2, "bias": normal(HIDDEN)},
                      "layer_output": {"kernel": normal(HIDDEN, WIDTH) / 2, "bias": normal(WIDTH)},
                      "layer_output_ln": ln()},
        }
    return {"params": params}


# ------------------------------------------------------------------ the official forward, in NumPy

def _layer_norm(x, p, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu_tanh(x):  # jax.nn.gelu's default (approximate=True)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _dense(x, p):
    return np.tensordot(x, p["kernel"], axes=1) + p["bias"]


def official_logits(tree, input_ids):
    """Transformer.apply(variables, input_ids, deterministic=True) in float64. input_ids [B, N + 1]:
    the class token (codebook + label) first, then tokens with -1 for [MASK]. Returns [B, N + 1, V]."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), tree["params"])
    emb = p["Embed_0"]
    word = emb["word_embeddings"]["embedding"]
    x = word[input_ids] + emb["position_embeddings"]["embedding"][np.arange(input_ids.shape[1])][None]
    x = _layer_norm(x, emb["embeddings_ln"])
    for i in range(DEPTH):
        layer = p[f"TransformerLayer_{i}"]
        att = layer["Attention_0"]["self_attention"]
        q, k, v = (np.einsum("btw,whd->bthd", x, att[n]["kernel"]) + att[n]["bias"] for n in ("query", "key", "value"))
        scores = np.einsum("bqhd,bkhd->bhqk", q / np.sqrt(q.shape[-1]), k)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        heads = np.einsum("bhqk,bkhd->bqhd", probs, v)
        out = np.einsum("bqhd,hdw->bqw", heads, att["out"]["kernel"]) + att["out"]["bias"]
        x = _layer_norm(out + x, layer["Attention_0"]["attention_output_ln"])
        mlp = layer["Mlp_0"]
        y = _dense(_gelu_tanh(_dense(x, mlp["intermediate_output"])), mlp["layer_output"])
        x = _layer_norm(y + x, mlp["layer_output_ln"])
    mlm = p["MlmLayer_0"]
    h = _layer_norm(_gelu_tanh(_dense(x, mlm["mlm_dense"])), mlm["mlm_ln"])
    return h @ word.T + mlm["mlm_bias"]["bias"]


# --------------------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from maskgen.weights import maskgit_transformer as importer
    from maskgen.weights.files import read_flax_checkpoint, write_flax_checkpoint

    path = str(tmp_path_factory.mktemp("maskgit_weights") / "maskgit_checkpoint")
    tree = official_tree()
    write_flax_checkpoint(path, tree)
    read = read_flax_checkpoint(path)
    config = importer.make_config(read, num_classes=CLASSES, token_shape=GRID)
    info = importer.data_info(read, config)
    return tree, config, info, importer.convert(read, config)


@pytest.fixture
def mesh_context():
    from maskgen import parallel
    from maskgen.config import DEFAULT_SHARDING_RULES

    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        yield


def test_config_is_read_off_the_tree(imported):
    from maskgen.recipes.maskgit import MaskGITRecipe

    _, config, info, _ = imported
    m = config.model
    assert (m.architecture, m.conditioning, m.positions, m.tie_head) == ("bert", "prefix", "learned", True)
    assert (m.width, m.depth, m.num_heads, m.mlp_ratio) == (WIDTH, DEPTH, HEADS, HIDDEN / WIDTH)
    assert tuple(m.token_shape) == GRID and m.codebook_size == CODEBOOK
    assert info["num_classes"] == CLASSES and tuple(info["token_shape"]) == GRID
    assert MaskGITRecipe.validate(config, info) == []


def test_converted_model_matches_the_official_forward(imported, mesh_context):
    from maskgen.recipes.maskgit import MaskGITRecipe

    tree, config, info, converted = imported
    config = copy.deepcopy(config)
    config.compute_dtype = "float32"  # the paper config computes in bfloat16 (on TPUs)
    recipe = MaskGITRecipe.from_config(config, info)
    model = recipe.make_model(nnx.Rngs(0))
    nnx.update(model, converted)
    rng = np.random.default_rng(1)
    batch = 4
    tokens = rng.integers(0, CODEBOOK, (batch, N))
    masked = rng.random((batch, N)) < 0.5
    masked[0] = True  # a fully masked grid (the first decoding step)
    labels = np.array([0, 1, 2, 1])
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, tokens, labels: nnx.merge(graphdef, state)(tokens, labels))
    inputs = jnp.asarray(np.where(masked, model.mask_token_id, tokens))
    got = np.asarray(forward(state, inputs.reshape((batch,) + GRID), jnp.asarray(labels)))
    official_ids = np.concatenate([CODEBOOK + labels[:, None], np.where(masked, -1, tokens)], axis=1)
    want = official_logits(tree, official_ids)[:, 1:, :CODEBOOK].reshape((batch,) + GRID + (CODEBOOK,))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # measured max |diff|: 1.4e-6, logits up to 3.8
    # Evaluation is deterministic although the config trains with dropout 0.1.
    assert config.model.dropout == 0.1
    np.testing.assert_array_equal(got, np.asarray(forward(state, inputs, jnp.asarray(labels))).reshape(got.shape))


def test_null_class_is_the_mask_row(imported):
    _, _, _, converted = imported
    np.testing.assert_array_equal(converted["class_embed"][-1], converted["token_embed"][-1])


@pytest.mark.parametrize("damage,match", [
    (lambda p: p["TransformerLayer_1"]["Mlp_0"].pop("layer_output_ln"),
     "missing params/TransformerLayer_1/Mlp_0/layer_output_ln/bias"),
    (lambda p: p["TransformerLayer_0"]["Attention_0"]["self_attention"]["key"].update(kernel=np.zeros((WIDTH, 3, 5))),
     r"params/TransformerLayer_0/Attention_0/self_attention/key/kernel is \(16, 3, 5\), expected \(16, 2, 8\)"),
    (lambda p: p["MlmLayer_0"].update(extra={"bias": np.zeros(2)}), "unexpected params/MlmLayer_0/extra/bias"),
    (lambda p: p.pop("Embed_0"), "no params/Embed_0/word_embeddings/embedding"),
    (lambda p: p.pop("TransformerLayer_0"), "no params/TransformerLayer_0/"),
])
def test_wrong_trees_fail_naming_the_key(damage, match):
    from maskgen.weights import maskgit_transformer as importer

    tree = copy.deepcopy(official_tree())
    damage(tree["params"])
    with pytest.raises(ValueError, match=match):
        importer.make_config(tree, num_classes=CLASSES, token_shape=GRID)
    with pytest.raises(ValueError, match="top-level keys"):
        importer.make_config({"model": tree["params"]})
    with pytest.raises(ValueError, match="not a square grid"):
        importer.make_config(official_tree(), num_classes=CLASSES)  # 6 positions
    with pytest.raises(ValueError, match="leaves a codebook of"):
        importer.make_config(official_tree(), num_classes=VOCAB, token_shape=GRID)
