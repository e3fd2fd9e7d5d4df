"""MAGNeT (arXiv 2401.04577): the level-k training masks and loss, local attention for levels above
0, level-by-level decoding (known tokens kept, network calls per level, rescoring), config checks."""

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskgen.models.token_transformer import TokenTransformer
from maskgen.recipes.magnet import LEVELS_MISMATCH, MAGNeTRecipe, level_masks

pytestmark = pytest.mark.usefixtures("one_device_mesh")

MAGNET_SPEECH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                             "magnet_speech.py")
T, K, V, CLASSES = 12, 3, 8, 4
TINY = dict(num_frames=T, num_levels=K, codebook_size=V, num_classes=CLASSES, width=16, depth=1, num_heads=2,
            mlp_ratio=2.0, local_window=2, span_length=3, class_dropout=0.0)


def perturbed(model, scale: float = 0.3, seed: int = 1):
    """Noise on every parameter, so that the (zero-initialised adaLN) model depends on its inputs."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: (np.asarray(x) + scale * rng.standard_normal(x.shape)).astype(np.float32), params)
    return graphdef, params, rest


def random_tokens(seed: int, batch: int) -> jnp.ndarray:
    return jax.random.randint(jax.random.key(seed), (batch, T, K), 0, V)


# ------------------------------------------------------------------------------------- training

def test_level_masks_by_hand():
    span = jnp.array([[True, False, True, False], [False, True, True, False]])
    masked, loss_at = level_masks(jnp.array([0, 1]), span, 3)
    # Example 0, level 0: the span at level 0, levels 1 and 2 everywhere; loss on the level-0 span.
    np.testing.assert_array_equal(masked[0], [[1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(loss_at[0], [[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    # Example 1, level 1: level 0 given, the span at level 1, level 2 everywhere.
    np.testing.assert_array_equal(masked[1], [[0, 0, 1], [0, 1, 1], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(loss_at[1], [[0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]])


class RecordingModel:
    """Stands in for the TokenTransformer in `loss`: fixed random logits, and records its inputs."""

    mask_token_id, null_class = V, CLASSES

    def __init__(self):
        self.logits = jax.random.normal(jax.random.key(7), (16, T, K, V))
        self.calls = []

    def __call__(self, tokens, labels, *, dropout_rng=None, local=False):
        self.calls.append((np.asarray(tokens), np.asarray(local)))
        return self.logits[: tokens.shape[0]]


def test_loss_counts_only_the_masked_positions_of_the_drawn_level():
    recipe = MAGNeTRecipe(**TINY)
    tokens = random_tokens(0, 16)
    labels = jnp.arange(16) % CLASSES
    model = RecordingModel()
    loss, metrics = recipe.loss(model, {"tokens": tokens, "label": labels}, jax.random.key(3), 0)
    (inputs, local), = model.calls
    is_mask = inputs == V
    tokens = np.asarray(tokens)
    # Each row's level is the lowest level with a masked position; everything above it is masked,
    # everything below it shows the true tokens, and at the level the masked frames form spans.
    level = np.argmax(is_mask.any(axis=1), axis=-1)
    assert len(set(level.tolist())) > 1  # levels are drawn per example
    rows = np.arange(16)
    for b in rows:
        k = level[b]
        assert is_mask[b, :, k + 1:].all() and not is_mask[b, :, :k].any()
        np.testing.assert_array_equal(inputs[b, :, :k], tokens[b, :, :k])
        np.testing.assert_array_equal(inputs[b, ~is_mask[b, :, k], k], tokens[b, ~is_mask[b, :, k], k])
        runs = np.diff(np.concatenate([[0], is_mask[b, :, k].astype(int), [0]]))
        starts, ends = np.flatnonzero(runs == 1), np.flatnonzero(runs == -1)
        assert len(starts) and all(e - s >= 3 or e == T for s, e in zip(starts, ends))  # spans of 3 frames
    np.testing.assert_array_equal(local, level > 0)  # levels above 0 attend locally
    # The loss is the cross-entropy of exactly those level-k masked positions, averaged over them all.
    log_p = jax.nn.log_softmax(np.asarray(model.logits), axis=-1)
    at_level = is_mask[rows, :, level]  # [B, T]
    ce = -np.take_along_axis(np.asarray(log_p)[rows, :, level], tokens[rows, :, level][..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), ce[at_level].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mask_ratio"]), at_level.mean(), rtol=1e-6)
    # A model right on exactly those positions and confidently wrong everywhere else has ~0 loss.
    scored = np.zeros((16, T, K), bool)
    scored[rows, :, level] = at_level
    targets = np.where(scored, tokens, (tokens + 1) % V)
    model.logits = jnp.where(jax.nn.one_hot(targets, V, dtype=bool), 30.0, -30.0)
    loss, _ = recipe.loss(model, {"tokens": jnp.asarray(tokens), "label": labels}, jax.random.key(3), 0)
    assert float(loss) < 1e-6


def test_step_level_choice_draws_one_level_per_batch():
    recipe = MAGNeTRecipe(**{**TINY, "level_choice": "step"})
    model = RecordingModel()
    recipe.loss(model, {"tokens": random_tokens(0, 16), "label": jnp.zeros(16, jnp.int32)}, jax.random.key(3), 0)
    (inputs, _), = model.calls
    assert len(set(np.argmax((inputs == V).any(axis=1), axis=-1).tolist())) == 1  # one level for all rows


# ------------------------------------------------------------------------------ local attention

def _backbone(local_window, conditioning="adaln"):
    # depth 2 x window 2: frame 0 can depend on frames 0..4 only.
    return TokenTransformer(vocab_size=V, token_shape=(T,), num_streams=K, num_classes=CLASSES, width=16, depth=2,
                            num_heads=2, mlp_ratio=2.0, conditioning=conditioning, local_window=local_window,
                            rngs=nnx.Rngs(0))


# One jitted forward; `local` is static (False, True, or a tuple of per-example flags).
_forward = jax.jit(lambda graphdef, state, tokens, labels, local: nnx.merge(graphdef, state)(
    tokens, labels, local=jnp.array(local) if isinstance(local, tuple) else local), static_argnums=(0, 4))


def forward(model, tokens, labels, local=False):
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef, state, tokens, labels, local))


def test_default_backbone_is_unchanged_by_the_local_window_option():
    plain, windowed = _backbone(None), _backbone(2)
    a, b = nnx.state(plain, nnx.Param), nnx.state(windowed, nnx.Param)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    tokens, labels = random_tokens(0, 2), jnp.array([0, 1])
    # local=False (the default) is full attention, bit for bit.
    np.testing.assert_array_equal(forward(plain, tokens, labels), forward(windowed, tokens, labels))
    with pytest.raises(ValueError, match="local_window=None"):
        forward(plain, tokens, labels, local=True)


@pytest.mark.parametrize("conditioning", ["adaln", "prefix"])
def test_local_attention_hides_frames_beyond_the_window(conditioning):
    graphdef, params, rest = perturbed(_backbone(2, conditioning))
    model = nnx.merge(graphdef, params, rest)
    tokens, labels = random_tokens(1, 2), jnp.array([2, 3])
    far = tokens.at[:, 9].set((tokens[:, 9] + 1) % V)
    near = tokens.at[:, 3].set((tokens[:, 3] + 1) % V)
    local = forward(model, tokens, labels, True)
    np.testing.assert_allclose(forward(model, far, labels, True)[:, 0], local[:, 0], rtol=0, atol=1e-6)
    assert np.abs(forward(model, near, labels, True)[:, 0] - local[:, 0]).max() > 1e-3
    # Full attention sees the far frame.
    assert np.abs(forward(model, far, labels)[:, 0] - forward(model, tokens, labels)[:, 0]).max() > 1e-3
    if conditioning == "adaln":  # a per-example flag: row 0 local, row 1 full, as the two calls give
        mixed = forward(model, tokens, labels, (True, False))
        np.testing.assert_allclose(mixed[0], local[0], atol=1e-6)
        np.testing.assert_allclose(mixed[1], forward(model, tokens, labels)[1], atol=1e-6)


# ------------------------------------------------------------------------------------- decoding

class CountingModel:
    """Wraps a TokenTransformer and counts its evaluations at run time (inside jit and scans)."""

    def __init__(self, model, counter):
        self.model, self.counter = model, counter

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, tokens, labels, **kwargs):
        jax.debug.callback(lambda: self.counter.append(1))
        return self.model(tokens, labels, **kwargs)


@pytest.fixture(scope="module")
def decoder():
    """A jitted MAGNeT generate on a perturbed tiny model: (batch, steps, rescorer?) -> (out, calls)."""
    from maskgen import parallel
    from maskgen.config import DEFAULT_SHARDING_RULES

    recipe = MAGNeTRecipe(**TINY)
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        graphdef, params, rest = perturbed(recipe.make_model(nnx.Rngs(0)))
    calls, rescored = [], []

    def rescorer(full):
        jax.debug.callback(lambda t: rescored.append(np.asarray(t)), full)
        return jnp.full(full.shape, math.log(0.5), jnp.float32)

    @functools.partial(jax.jit, static_argnames=("steps", "rescore"))
    def run(params, batch, steps, rescore):
        model = CountingModel(nnx.merge(graphdef, params, rest), calls)
        return recipe.generate(model, batch, jax.random.key(0), steps_per_level=steps,
                               rescorer=rescorer if rescore else None)

    def decode(batch, steps=(3, 2, 1), rescore=False):
        calls.clear(), rescored.clear()
        out = jax.device_get(run(params, batch, steps, rescore))
        jax.effects_barrier()
        return out, len(calls), list(rescored)

    return decode


def test_level_by_level_decoding_fills_everything_and_keeps_known_tokens(decoder):
    tokens = random_tokens(2, 2)
    known = jax.random.uniform(jax.random.key(3), (2, T, K)) < 0.4
    known = known.at[0, :4].set(True)  # a prompt: the first 4 frames of row 0, every level
    out, calls, _ = decoder({"tokens": tokens, "known": known, "label": jnp.array([1, 2])})
    result = np.asarray(out["tokens"])
    assert result.shape == (2, T, K) and result.min() >= 0 and result.max() < V
    np.testing.assert_array_equal(result[np.asarray(known)], np.asarray(tokens)[np.asarray(known)])
    # Guided (cfg_scale 10 -> 1): one 2B-batch call per step, steps_per_level (3, 2, 1) -> 6 calls.
    assert int(out["nfe"]) == calls == 3 + 2 + 1


def test_rescoring_sees_full_streams_once_per_step(decoder):
    out, calls, rescored = decoder({"label": jnp.array([0, 3])}, rescore=True)
    # One rescoring per step (3 + 2 + 1); for levels below the last, one greedy pass per step
    # fills the higher levels (3 + 2), counted in nfe.
    assert len(rescored) == 6 and calls == int(out["nfe"]) == 6 + 3 + 2
    for full in rescored:
        assert full.shape == (2, T, K) and full.min() >= 0 and full.max() < V  # no [MASK] ids
    np.testing.assert_array_equal(rescored[-1], np.asarray(out["tokens"]))  # the last step sees the result


def test_generate_rejects_steps_for_another_number_of_levels():
    recipe = MAGNeTRecipe(**TINY)
    with pytest.raises(ValueError, match=r"one int >= 1 per codec level: the model has 3 levels"):
        recipe.generate(None, {"label": jnp.zeros(1, jnp.int32)}, jax.random.key(0), steps_per_level=(4, 2))
    with pytest.raises(ValueError, match=LEVELS_MISMATCH):
        recipe.generate(None, {"tokens": jnp.zeros((1, T, 4), jnp.int32), "known": jnp.zeros((1, T, 4), bool),
                               "label": jnp.zeros(1, jnp.int32)}, jax.random.key(0), steps_per_level=(1, 1, 1))


# --------------------------------------------------------------------------------------- config

def _codec_tokens_info(levels=K, frames=T, codebook=V):
    from maskgen.data.specs import LabelSpec, TokenSpec, legacy_info

    fields = {"tokens": TokenSpec((frames, levels), codebook, levels), "label": LabelSpec(CLASSES)}
    return legacy_info(fields, {"train": 100, "test": 20}, {"workdir": "/runs/codec8"})


def _config(**model):
    from maskgen.config import load_config_file

    config = load_config_file(f"{MAGNET_SPEECH}:size=tiny,frames=12,levels=3,codebook_size=8,tokens=/x")
    config.model.update(model)
    return config


def test_config_checks_name_the_mismatch():
    validate = MAGNeTRecipe.validate
    assert validate(_config(), _codec_tokens_info()) == []
    problems = validate(_config(), _codec_tokens_info(levels=8))
    assert any(LEVELS_MISMATCH in p and "has 8 levels" in p and "num_levels is 3" in p and "/runs/codec8" in p
               for p in problems), problems
    problems = validate(_config(), _codec_tokens_info(frames=10))
    assert any("10 frames per clip" in p and "num_frames is 12" in p for p in problems)
    assert any("256 codes" in p for p in validate(_config(), _codec_tokens_info(codebook=256)))
    config = _config()
    config.sampling.steps_per_level = (4, 2)
    assert any("steps_per_level" in p and "one per codec level" in p for p in validate(config, _codec_tokens_info()))
    # Image VQ tokens [8, 8] are not codec streams.
    from maskgen.data.specs import TokenSpec, legacy_info

    image_tokens = legacy_info({"tokens": TokenSpec((8, 8), 8, 1)}, {"train": 100})
    assert any("[frames, levels]" in p for p in validate(_config(), image_tokens))


def test_recipe_from_the_cpu_config_declares_what_callers_use():
    from maskgen.recipes import get_recipe

    recipe = get_recipe("magnet").from_config(_config(), _codec_tokens_info())
    info = recipe.info()
    assert info["generator"] == "magnet" and tuple(info["token_shape"]) == (T, K) and info["num_levels"] == K
    assert recipe.supported_tasks() == {"class", "infill"} and recipe.capabilities == {"generate", "infill"}
    assert info["sampling"]["steps_per_level"] == (10, 4, 2)


def test_paper_config_is_magnet_small_on_10s_of_32k_encodec_tokens():
    from maskgen.config import load_config_file

    path = MAGNET_SPEECH.replace("magnet_speech.py", "magnet_small_32k.py")
    info = {**_codec_tokens_info(levels=4, frames=500, codebook=2048), "splits": {"train": 10_000}}
    assert MAGNeTRecipe.validate(load_config_file(f"{path}:size=tiny,tokens=/x"), info) == []
    paper = load_config_file(f"{path}:tokens=/x")
    assert MAGNeTRecipe.validate(paper, info) == []
    assert (paper.model.width, paper.model.depth, paper.model.num_heads, paper.model.local_window) == (1024, 24, 16, 5)
    assert paper.sampling.steps_per_level == (20, 10, 10, 10) and paper.loss.span_length == 3
    other_codec = {**info, "token_shape": (500, 8), "num_levels": 8}
    assert any(LEVELS_MISMATCH in p for p in MAGNeTRecipe.validate(paper, other_codec))


@pytest.mark.slow  # trains the tiny CPU config through the loop (about a minute on 2 cores)
def test_cpu_config_trains_on_codec_token_streams(tmp_path):
    """Tokens whose levels follow the word and each other: the masked level-k loss falls."""
    from maskgen import config as config_lib
    from maskgen import train as train_lib
    from maskgen.data.tokens import write_token_metadata, write_token_split

    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, 512)
    level0 = (labels[:, None] * 2 + np.arange(T)[None] // 3) % V
    streams = np.stack([level0, (level0 * 3 + 1) % V, (level0 + np.roll(level0, 1, axis=1)) % V], axis=-1)
    data = str(tmp_path / "tokens")
    os.makedirs(data)
    split = write_token_split(data, "train", [{"tokens": x, "label": int(y)} for x, y in zip(streams, labels)])
    write_token_metadata(data, token_shape=(T, K), codebook_size=V, num_levels=K, num_classes=CLASSES,
                         splits={"train": split}, tokenizer={})
    config = config_lib.load_config_file(f"{MAGNET_SPEECH}:size=tiny,steps=300,frames={T},levels={K},"
                                         f"codebook_size={V},tokens={data}")
    config_lib.apply_overrides(config, ["evals.generation.every=-1", "log_every=10"])
    train_lib.train(config, str(tmp_path / "run"))
    import json

    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl") if '"loss"' in line]
    assert losses[-1] < 0.5 * losses[0], losses


def test_time_masks_on_mel_codec_streams_select_frames_not_levels():
    """A mel codec decodes to a log-mel but its tokens are [frames, K] streams: `--mask time:S-E`
    must select frames (every level), timed by the codec's frame rate, not read the streams as a
    [bands, time] grid."""
    from types import SimpleNamespace

    from maskgen.generate import GeneratorHandle

    tokenizer = SimpleNamespace(info={"quantizer": "rvq", "frame_rate": 50.0, "mel_frames": 100})
    handle = SimpleNamespace(info={"token_shape": (50, 4)},
                             decoder=SimpleNamespace(decodes_to="log_mel", tokenizer=tokenizer, seconds_per_frame=0.01))
    handle.codec_streams = lambda: GeneratorHandle.codec_streams(handle)
    mask = GeneratorHandle.audio_mask(handle, "time:0.3-0.6")
    assert mask.shape == (50, 4)
    assert np.array_equal(np.flatnonzero(mask.any(axis=1)), np.arange(15, 30)) and mask[15:30].all()
    assert GeneratorHandle.token_layout(handle) == "audio"
