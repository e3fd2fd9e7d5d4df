"""K code streams in the `maskgit` and `autoregressive` recipes, and the AR model's roles in MAGNeT
decoding (maskgen.sampling.rescoring): teacher-forced log-probs, the rescorer, the hybrid prefix.

Tiny shapes (6 frames x 3 levels, 8 codes) and one module-scoped model per recipe keep this fast.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO

pytestmark = pytest.mark.usefixtures("one_device_mesh")

T, K, V, C, B = 6, 3, 8, 4, 3
AR_SPEECH = os.path.join(REPO, "experiments", "ar_speech.py")


def _recipe(cls, **overrides):
    kwargs = dict(token_shape=(T, K), num_streams=K, codebook_size=V, num_classes=C, width=32, depth=2,
                  num_heads=2, mlp_ratio=2.0, conditioning="adaln", positions="learned", qk_norm=False,
                  tie_head=True, label_smoothing=0.0, class_dropout=0.1)
    return cls(**{**kwargs, **overrides})


def _perturbed(model, scale=0.3, seed=1):
    """Noise on every parameter, so the zero-initialised adaLN weights stop hiding labels and context."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape), jnp.float32),
                          params)
    return nnx.merge(graphdef, params, rest)


@pytest.fixture(scope="module")
def ar(request):
    from maskgen import parallel
    from maskgen.config import DEFAULT_SHARDING_RULES
    from maskgen.recipes.maskgit import AutoregressiveRecipe

    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        recipe = _recipe(AutoregressiveRecipe)
        model = _perturbed(recipe.make_model(nnx.Rngs(0)))
    tokens = jax.random.randint(jax.random.key(1), (B, T, K), 0, V)
    labels = jnp.array([0, 3, 1], jnp.int32)
    return recipe, model, tokens, labels


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_token_log_probs_are_the_logits_log_softmax_at_each_token_and_sum_to_the_nll(ar):
    recipe, model, tokens, labels = ar
    batch = {"tokens": tokens, "label": labels}
    got = np.asarray(recipe.token_log_probs(model, batch, None))
    assert got.shape == (B, T, K) and got.dtype == np.float32
    logits = np.asarray(model(tokens, labels))  # [B, T, K, V]
    hand = np.take_along_axis(_log_softmax(logits), np.asarray(tokens)[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, hand, rtol=1e-5, atol=1e-5)
    ll = recipe.log_likelihood(model, batch, None)
    np.testing.assert_allclose(np.asarray(ll["nll"]), -hand.sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(ll["num_tokens"]), T * K)  # every stream's token counts


def test_frame_t_is_predicted_from_the_frames_before_it_only(ar):
    _, model, tokens, labels = ar
    changed = tokens.at[:, 3].set((tokens[:, 3] + 1) % V)  # all K tokens of frame 3
    before, after = np.asarray(model(tokens, labels)), np.asarray(model(changed, labels))
    np.testing.assert_allclose(before[:, :4], after[:, :4], rtol=1e-5, atol=1e-6)  # frames <= 3 do not see it
    assert np.abs(before[:, 4:] - after[:, 4:]).max() > 1e-3  # later frames do
    # The label matters too (after the adaLN noise).
    assert np.abs(before - np.asarray(model(tokens, (labels + 1) % C))).max() > 1e-3


def test_ar_rescorer_runs_in_jit_and_equals_token_log_probs(ar):
    from maskgen.sampling.rescoring import ar_rescorer

    recipe, model, tokens, labels = ar
    graphdef, state = nnx.split(model)
    score = jax.jit(lambda s, t, y: ar_rescorer(nnx.merge(graphdef, s), y)(t))(state, tokens, labels)
    np.testing.assert_allclose(np.asarray(score),
                               np.asarray(recipe.token_log_probs(model, {"tokens": tokens, "label": labels}, None)),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"models tokens \(6, 3\) per example.*candidates are \(6, 2\)"):
        ar_rescorer(model, labels)(tokens[..., :2])


def test_rescorer_and_prefix_refuse_a_bidirectional_model():
    from maskgen.recipes.maskgit import MaskGITRecipe
    from maskgen.sampling.rescoring import ar_prefix, ar_rescorer

    model = _recipe(MaskGITRecipe).make_model(nnx.Rngs(0))
    with pytest.raises(ValueError, match="causal"):
        ar_rescorer(model, None)
    with pytest.raises(ValueError, match="causal"):
        ar_prefix(model, None, jax.random.key(0), num_positions=2, batch_size=1)


def test_ar_prefix_is_the_first_frames_of_the_full_decode(ar):
    from maskgen.sampling.rescoring import ar_prefix

    recipe, model, _, labels = ar
    rng, cfg_scale = jax.random.key(7), 2.5  # guided: the null-label rows are batched in, as in the full decode
    full = np.asarray(recipe.generate(model, {"label": labels}, rng, cfg_scale=cfg_scale)["tokens"])
    assert full.shape == (B, T, K) and full.min() >= 0 and full.max() < V
    prefix = np.asarray(ar_prefix(model, labels, rng, num_positions=2, cfg_scale=cfg_scale))
    np.testing.assert_array_equal(prefix, full[:, :2])
    with pytest.raises(ValueError, match=r"num_positions must be in \[1, 6\]"):
        ar_prefix(model, labels, rng, num_positions=7)


def test_ar_generate_continues_a_prompt_of_whole_frames(ar):
    recipe, model, tokens, labels = ar
    known = jnp.zeros((B, T, K), bool).at[:, :2].set(True).at[0, 2, 0].set(True)  # a partial frame is not a prompt
    out = np.asarray(recipe.generate(model, {"tokens": tokens, "known": known, "label": labels},
                                     jax.random.key(3))["tokens"])
    np.testing.assert_array_equal(out[:, :2], np.asarray(tokens)[:, :2])
    assert (out[:, 2:] != np.asarray(tokens)[:, 2:]).any()


@pytest.fixture(scope="module")
def maskgit():
    from maskgen import parallel
    from maskgen.config import DEFAULT_SHARDING_RULES
    from maskgen.recipes.maskgit import MaskGITRecipe

    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        recipe = _recipe(MaskGITRecipe, mask_schedule="cosine")
        return recipe, _perturbed(recipe.make_model(nnx.Rngs(2)))


def test_kstream_maskgit_masks_tokens_of_every_stream_and_keeps_known_ones(maskgit, ar):
    recipe, model = maskgit
    _, _, tokens, labels = ar
    loss, aux = recipe.loss(model, {"tokens": tokens, "label": labels}, jax.random.key(0), 0)
    assert np.isfinite(float(loss)) and 0 < float(aux["mask_ratio"]) <= 1
    known = jax.random.uniform(jax.random.key(5), (B, T, K)) < 0.5
    out = recipe.generate(model, {"tokens": tokens, "known": known, "label": labels}, jax.random.key(1),
                          num_steps=3, cfg_scale=2.0)
    got = np.asarray(out["tokens"])
    assert got.shape == (B, T, K) and got.min() >= 0 and got.max() < V
    np.testing.assert_array_equal(got[np.asarray(known)], np.asarray(tokens)[np.asarray(known)])


def test_hybrid_decode_gives_the_masked_model_the_ar_prefix_as_known_frames(ar):
    from maskgen.sampling.rescoring import hybrid_decode

    _, ar_model, _, labels = ar
    seen = {}

    def masked_generate(batch, rng):  # stands in for MAGNeT: fills the unknown tokens with V - 1
        seen.update(batch)
        return {"tokens": jnp.where(batch["known"], batch["tokens"], V - 1), "nfe": jnp.int32(5)}

    rng = jax.random.key(4)
    out = hybrid_decode(ar_model, masked_generate, labels, rng, token_shape=(T, K), prefix_frames=2)
    tokens, known = np.asarray(out["tokens"]), np.asarray(seen["known"])
    assert known.shape == (B, T, K) and known[:, :2].all() and not known[:, 2:].any()
    np.testing.assert_array_equal(np.asarray(seen["label"]), np.asarray(labels))
    assert (tokens[:, 2:] == V - 1).all() and tokens[:, :2].max() < V
    assert len({tuple(row.ravel()) for row in tokens[:, :2]}) > 1  # sampled per example, not a constant
    assert int(out["ar_steps"]) == 2 and int(out["nfe"]) == 5
    with pytest.raises(ValueError, match="prefix_frames must be in"):
        hybrid_decode(ar_model, masked_generate, labels, rng, token_shape=(T, K), prefix_frames=T)
    with pytest.raises(ValueError, match="same codec tokens"):
        hybrid_decode(ar_model, masked_generate, labels, rng, token_shape=(T, K + 1), prefix_frames=2)


# ---------------------------------------------------------------- configs against the data

def _codec_tokens_info(frames=50, levels=4, codebook=256):
    return {"token_shape": (frames, levels), "codebook_size": codebook, "num_levels": levels, "num_classes": 10,
            "splits": {"train": 2560, "test": 640}, "image_shape": None, "tokenizer": {"workdir": "runs/codec"}}


@pytest.mark.parametrize("recipe", ["autoregressive", "maskgit"])
def test_kstream_configs_are_checked_against_the_codec_tokens(recipe):
    from maskgen import config as config_lib
    from maskgen.recipes import get_recipe

    def problems(*overrides, info=None):
        config = config_lib.load_config_file(f"{AR_SPEECH}:size=tiny")
        config_lib.apply_overrides(config, [f"recipe={recipe}", *overrides] if recipe == "maskgit" else list(overrides))
        if recipe == "maskgit":
            with config.unlocked():
                config.loss.mask_schedule = "cosine"
        return get_recipe(config.recipe).validate(config, info or _codec_tokens_info())

    assert not problems()
    # A model of one token per position, on 4-level code streams: both named, the fix given.
    got = " ".join(problems("model.num_streams=1", "model.token_shape=(50, 4)"))
    assert "the tokens have 4 residual levels" in got and "config.model.num_streams=1" in got
    assert "set config.model.num_streams=4" in got
    # A codec run whose number of levels differs from the model's: both numbers named.
    got = " ".join(problems("model.num_streams=2", "model.token_shape=(50, 2)"))
    assert "codec run has 4 residual levels" in got and "config.model.num_streams=2" in got
    got = " ".join(problems("model.num_streams=3"))
    assert "num_streams=3 needs config.model.token_shape to end in the 3 streams" in got
    assert not problems(info=_codec_tokens_info(levels=4))


@pytest.mark.slow  # a real (tiny) training run: about a minute on a busy 2-core machine
def test_ar_speech_config_trains_on_codec_tokens_and_its_loss_falls(tmp_path):
    from maskgen import config as config_lib
    from maskgen import train as train_lib
    from maskgen.data.specs import TokenSpec
    from maskgen.data.tokens import write_token_metadata, write_token_split

    # Word-dependent code streams: level k of frame t is (word + t * (k + 1)) % V, so a model that
    # reads the word and the previous frame predicts every token.
    data = tmp_path / "tokens"
    data.mkdir()
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 64), ("test", 16)):
        words = rng.integers(0, C, n)
        streams = [((w + np.arange(T)[:, None] * (np.arange(K)[None] + 1)) % V).astype(np.int32) for w in words]
        splits[split] = write_token_split(str(data), split, [{"tokens": s, "label": int(w)}
                                                             for s, w in zip(streams, words)])
    write_token_metadata(str(data), fields={"tokens": TokenSpec((T, K), V, K)}, num_classes=C, splits=splits,
                         tokenizer={})
    config = config_lib.load_config_file(f"{AR_SPEECH}:tokens={data},size=tiny,steps=40,frames={T},levels={K},"
                                         f"codebook_size={V}")
    config_lib.apply_overrides(config, ["evals.generation.every=-1", "log_every=5", "optimizer.lr=3e-3"])
    workdir = str(tmp_path / "run")
    train_lib.train(config, workdir)
    import json

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert losses[0] == pytest.approx(np.log(V), abs=0.5)  # starts near uniform over the codes
    assert losses[-1] < losses[0] - 0.5, losses
