"""MaskGCT (arXiv 2409.00750): masking rules, prompt handling, level selection, duration, decoding
and errors, on stand-in frozen tokenizers (tiny, no trained runs needed)."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskgen.recipes import maskgct as mg

RATE, FRAME_RATE, WINDOW = 800, 50.0, 160  # 16 samples per frame, 10 frames per 0.2 s window
FRAMES = 20  # two windows: prompt clip + target clip


class StandInRun:
    """What FrozenTokenizer needs of a FrozenRun: workdir, info, data_info and call("encode")."""

    def __init__(self, workdir, info, encode):
        self.workdir, self.info, self.encode = workdir, info, encode
        self.data_info = {"fields": {"audio": {"shape": (WINDOW, 1), "sample_rate": RATE}}}

    def call(self, method, batch, rng=None):
        assert method == "encode"
        return self.encode(batch["audio"])


def _frame_energy(audio, frames_per_window, levels):
    x = audio[..., 0].reshape(audio.shape[0], frames_per_window, -1)
    return jnp.clip((jnp.sqrt(jnp.mean(x ** 2, -1)) * levels * 2).astype(jnp.int32), 0, levels - 1)


def semantic_run(codebook=8, frame_rate=FRAME_RATE, frames=10):
    info = {"frame_rate": frame_rate, "codebook_size": codebook, "token_shape": (frames,)}
    return mg.FrozenTokenizer(StandInRun("/sem", info, lambda a: _frame_energy(a, frames, codebook)),
                              "config.maskgct.semantic_workdir", levels=False)


def codec_run(levels=3, codebook=6, frame_rate=FRAME_RATE):
    def encode(audio):
        e = _frame_energy(audio, 10, codebook)
        return jnp.stack([(e + k) % codebook for k in range(levels)], axis=-1)

    info = {"frame_rate": frame_rate, "codebook_size": codebook, "token_shape": (10, levels), "num_levels": levels,
            "sample_rate": RATE, "num_samples": WINDOW}
    return mg.FrozenTokenizer(StandInRun("/codec", info, encode), "config.maskgct.codec_workdir", levels=True)


def _model(recipe):
    with nnx.use_eager_sharding(False):  # a single-device model, built outside the loop's mesh
        return recipe.make_model(nnx.Rngs(0))


SMALL = dict(width=16, depth=1, num_heads=2, mlp_ratio=2.0, num_frames=FRAMES)


@pytest.fixture(scope="module")
def t2s():
    table, lengths = mg.phone_table(["zero", "one", "two"])
    ids, pad = mg.phone_vocab_size()
    recipe = mg.MaskGCTT2SRecipe(semantic=semantic_run(), phone_ids=table, phone_lengths=lengths, num_phone_ids=ids,
                                 phone_pad=pad, max_phones=16, **SMALL)
    return recipe, _model(recipe)


@pytest.fixture(scope="module")
def s2a():
    recipe = mg.MaskGCTS2ARecipe(semantic=semantic_run(), codec=codec_run(), num_levels=3, **SMALL)
    return recipe, _model(recipe)


def _batch(b=4, seed=0):
    rng = np.random.default_rng(seed)
    audio = (rng.normal(size=(b, 2 * WINDOW, 1)) * rng.uniform(0.05, 0.5, size=(b, 2 * WINDOW // 16, 1)).repeat(16, 1))
    num = np.array([2 * WINDOW, 250, 200, 2 * WINDOW][:b])
    audio[np.arange(2 * WINDOW)[None, :] >= num[:, None]] = 0.0
    return {"audio": jnp.asarray(audio, jnp.float32), "num_samples": jnp.asarray(num, jnp.int32),
            "label": jnp.asarray(rng.integers(0, 3, b), jnp.int32),
            "prompt_label": jnp.asarray(rng.integers(0, 3, b), jnp.int32)}


# ------------------------------------------------------------------------- masking rules

def test_mask_probability_is_sin_with_floor():
    u = jnp.asarray([1.0, 1.0 / 3.0, 0.05, 1e-5])
    np.testing.assert_allclose(mg.mask_probability(u, 0.2), [1.0, 0.5, 0.2, 0.2], atol=1e-6)


def test_prompt_lengths_follow_amphion_bounds():
    valid = jnp.full((20000,), 50)
    lengths = np.asarray(mg.draw_prompt_lengths(jax.random.key(0), valid, max_fraction=0.4, min_frames=5,
                                                drop_prob=0.15))
    kept = lengths[lengths > 0]
    assert kept.min() == 5 and kept.max() == 19  # U[min(50/4, 5), 0.4 * 50) = U[5, 20)
    assert abs(np.mean(lengths == 0) - 0.15) < 0.01
    assert abs(np.bincount(kept)[5:].std() / np.bincount(kept)[5:].mean()) < 0.1  # uniform over 5..19
    short = np.asarray(mg.draw_prompt_lengths(jax.random.key(1), jnp.full((100,), 8), max_fraction=0.4,
                                              min_frames=5, drop_prob=0.0))
    assert set(short.tolist()) == {2}  # U[min(2, 5), max(3, 3)) for T = 8


def test_bernoulli_mask_rate_candidates_and_nonempty():
    candidates = jnp.asarray(np.random.default_rng(0).random((4000, 30)) < 0.6)
    prob = jnp.full((4000,), 0.3)
    masked = np.asarray(mg.bernoulli_mask(jax.random.key(0), prob, candidates))
    assert not np.any(masked & ~np.asarray(candidates))
    assert abs(masked.sum() / np.asarray(candidates).sum() - 0.3) < 0.01
    low = np.asarray(mg.bernoulli_mask(jax.random.key(1), jnp.full((4000,), 1e-6), candidates))
    assert np.all(low.sum(-1) == 1) and np.all(low.argmax(-1) == np.asarray(candidates).argmax(-1))


def test_t2s_prompt_and_padding_never_masked(t2s):
    recipe, _ = t2s
    valid = mg.valid_frame_mask(jnp.asarray([320, 250, 200, 100] * 50), recipe.samples_per_frame, FRAMES)
    prompt, masked = recipe._draw_mask(jax.random.key(3), valid)
    prompt, masked, valid = map(np.asarray, (prompt, masked, valid))
    assert not np.any(masked & prompt) and not np.any(masked & ~valid)
    assert np.all(masked.sum(-1) >= 1)
    assert valid[1].sum() == math.ceil(250 / 16)


def test_t2s_loss_counts_masked_semantic_positions_only(t2s, monkeypatch):
    recipe, model = t2s
    batch = _batch()

    def fake_logits(model, phones, frames, dropout_rng=None):
        # uniform at [MASK] inputs, a confident wrong answer everywhere else: only masked positions
        # may count, so the loss must be exactly log C.
        codes = recipe.semantic.encode(batch["audio"], FRAMES)
        wrong = jax.nn.one_hot((codes + 1) % recipe.codebook_size, recipe.codebook_size) * 100.0
        return jnp.where((frames == model.mask_token_id)[..., None], 0.0, wrong)

    monkeypatch.setattr(recipe, "logits", fake_logits)
    loss, metrics = recipe.loss(model, batch, jax.random.key(0), 0)
    np.testing.assert_allclose(float(loss), math.log(recipe.codebook_size), rtol=1e-5)
    assert 0 < float(metrics["mask_ratio"]) <= 1


def test_phone_prefix_packs_prompt_then_target(t2s):
    recipe, _ = t2s
    phones, first_len = recipe.phones_of_words(jnp.asarray([1]), jnp.asarray([2]))
    one, two = mg.text_phone_ids("one"), mg.text_phone_ids("two")
    expect = np.concatenate([one, two, np.zeros(16 - len(one) - len(two), np.int32)]) + recipe.phone_offset
    np.testing.assert_array_equal(np.asarray(phones[0]), expect)
    assert int(first_len[0]) == len(one)


def test_shift_left_right_roundtrip():
    x = jnp.arange(2 * 6).reshape(2, 6)
    shift = jnp.asarray([0, 2])
    left = mg.shift_left(x, shift, -1)
    np.testing.assert_array_equal(np.asarray(left[1]), [8, 9, 10, 11, -1, -1])
    back = mg.shift_right(left, shift)
    np.testing.assert_array_equal(np.asarray(back[1, 2:]), [8, 9, 10, 11])
    np.testing.assert_array_equal(np.asarray(back[0]), np.asarray(x[0]))


# ------------------------------------------------------------------------- S2A

def test_level_weights_linear_low_levels_favoured():
    np.testing.assert_allclose(mg.level_weights(4), [0.4, 0.3, 0.2, 0.1])


def test_s2a_inputs_levels_prompt_and_padding(s2a):
    recipe, model = s2a
    b = 3000
    acoustic = jnp.zeros((b, FRAMES, 3), jnp.int32) + 1
    valid = mg.valid_frame_mask(jnp.asarray([320, 250, 200] * 1000), recipe.samples_per_frame, FRAMES)
    level, masked, inputs, prompt = map(np.asarray, recipe.training_inputs(jax.random.key(0), acoustic, valid,
                                                                           model.mask_token_id))
    valid = np.asarray(valid)
    freq = np.bincount(level, minlength=3) / b
    np.testing.assert_allclose(freq, [3 / 6, 2 / 6, 1 / 6], atol=0.03)
    is_mask = inputs == model.mask_token_id
    for row in range(200):
        k = level[row]
        assert not is_mask[row, :, :k].any()  # lower levels given
        np.testing.assert_array_equal(is_mask[row, :, k], masked[row])  # the level's Bernoulli mask
        np.testing.assert_array_equal(is_mask[row, :, k + 1:], (valid[row] & ~prompt[row])[:, None].repeat(2 - k, 1))
        assert not is_mask[row][prompt[row]].any()  # the prompt: every level given
        assert np.all(inputs[row][~valid[row]] == recipe.pad)


def test_s2a_loss_counts_masked_positions_of_the_level_only(s2a, monkeypatch):
    recipe, model = s2a
    batch = _batch()

    def fake_level_logits(model, semantic, acoustic, level):
        current = jnp.take_along_axis(acoustic, level[:, None, None], axis=2)[..., 0]
        wrong = jax.nn.one_hot((current + 1) % recipe.acoustic_size, recipe.acoustic_size) * 100.0
        return jnp.where((current == model.mask_token_id)[..., None], 0.0, wrong)

    monkeypatch.setattr(recipe, "level_logits", fake_level_logits)
    loss, _ = recipe.loss(model, batch, jax.random.key(1), 0)
    np.testing.assert_allclose(float(loss), math.log(recipe.acoustic_size), rtol=1e-5)


# ------------------------------------------------------------------------- duration, errors

def test_duration_from_prompt_phone_rate():
    assert mg.target_frames(50.0, 0.6, 4, 6) == 45  # 50 x 0.6 x 6 / 4
    assert mg.target_frames(50.0, 0.01, 10, 1) == 1
    with pytest.raises(ValueError, match="no phonemes"):
        mg.target_frames(50.0, 0.5, 0, 3)


def test_codec_levels_must_match_the_model():
    with pytest.raises(ValueError, match="number of levels differs.*has 3 RVQ levels.*num_levels=4"):
        mg.MaskGCTS2ARecipe(semantic=semantic_run(), codec=codec_run(levels=3), num_levels=4, **SMALL)


def test_frame_rate_mismatch_names_both():
    with pytest.raises(ValueError, match="semantic_workdir='/sem' makes 50 tokens/s.*codec_workdir='/codec' 75"):
        mg.MaskGCTS2ARecipe(semantic=semantic_run(), codec=codec_run(frame_rate=75.0), num_levels=3, **SMALL)


def test_semantic_tokens_edge_padded_per_window():
    # 8 tokens per 0.2 s window at 50 Hz (10 expected): each window repeats its last token twice.
    run = StandInRun("/sem", {"frame_rate": FRAME_RATE, "codebook_size": 99, "token_shape": (8,)},
                     lambda a: jnp.tile(jnp.arange(8)[None], (a.shape[0], 1)) + 10 * (a[:, 0, 0] > 0)[:, None])
    tok = mg.FrozenTokenizer(run, "config.maskgct.semantic_workdir", levels=False)
    audio = jnp.zeros((1, 2 * WINDOW, 1)).at[0, WINDOW].set(1.0)
    codes = np.asarray(tok.encode(audio, FRAMES))[0]
    np.testing.assert_array_equal(codes, [0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 10, 11, 12, 13, 14, 15, 16, 17, 17, 17])


def test_unreadable_text_is_refused():
    from maskgen.audio.phonemes import UnreadableTextError

    with pytest.raises(UnreadableTextError, match="cannot read"):
        mg.text_phone_ids("seven \u4e03")


# ------------------------------------------------------------------------- decoding

def test_t2s_generate_keeps_prompt_and_pads_with_guidance(t2s):
    recipe, model = t2s
    both = np.concatenate([mg.text_phone_ids("one"), mg.text_phone_ids("two")])
    phones = np.stack([np.pad(both, (0, 16 - len(both)))] * 2)
    prompt_tokens = jnp.asarray(np.random.default_rng(0).integers(0, 8, (2, FRAMES)), jnp.int32)
    batch = {"phones": jnp.asarray(phones), "num_prompt_phones": jnp.asarray([5, 5]),
             "prompt_tokens": prompt_tokens, "prompt_frames": jnp.asarray([6, 3]),
             "total_frames": jnp.asarray([15, 20])}
    out = jax.jit(lambda b, r: recipe.generate(model, b, r, num_steps=4, cfg_scale=2.5))(batch, jax.random.key(0))
    tokens = np.asarray(out["tokens"])
    np.testing.assert_array_equal(tokens[0, :6], np.asarray(prompt_tokens[0, :6]))
    np.testing.assert_array_equal(tokens[1, :3], np.asarray(prompt_tokens[1, :3]))
    assert np.all(tokens[0, 15:] == 0) and tokens.max() < recipe.codebook_size and int(out["nfe"]) == 4


def test_s2a_generate_level_by_level(s2a):
    recipe, model = s2a
    rng = np.random.default_rng(1)
    batch = {"semantic": jnp.asarray(rng.integers(0, 8, (2, FRAMES)), jnp.int32),
             "prompt_tokens": jnp.asarray(rng.integers(0, 6, (2, FRAMES, 3)), jnp.int32),
             "prompt_frames": jnp.asarray([5, 0]), "total_frames": jnp.asarray([18, 12])}
    out = jax.jit(lambda b, r: recipe.generate(model, b, r, steps_per_level=(3, 2), cfg_scale=2.0))(
        batch, jax.random.key(0))
    tokens = np.asarray(out["tokens"])
    np.testing.assert_array_equal(tokens[0, :5], np.asarray(batch["prompt_tokens"][0, :5]))
    assert np.all(tokens[0, 18:] == 0) and np.all(tokens[1, 12:] == 0) and tokens.max() < recipe.acoustic_size
    assert int(out["nfe"]) == 3 + 2 + 2  # per-level steps, the last repeated


# ------------------------------------------------------------------------- the trained runs (slow)

# The runs docs/audio.md trains (runs/t2s, runs/s2a under the repository), or $MASKGEN_MASKGCT_RUNS.
RUNS = os.environ.get("MASKGEN_MASKGCT_RUNS", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                           "runs"))


@pytest.mark.slow
def test_prompted_samples_are_closer_to_the_prompt_voice_than_to_other_voices():
    """The issue's check, on trained runs (t2s and s2a in $MASKGEN_MASKGCT_RUNS, default runs/): samples
    prompted with held-out voices are nearer their prompt's voice than the other held-out voices, well
    above chance and above the no-prompt baseline."""
    t2s, s2a = os.path.join(RUNS, "t2s"), os.path.join(RUNS, "s2a")
    if not (os.path.isdir(os.path.join(t2s, "checkpoints")) and os.path.isdir(os.path.join(s2a, "checkpoints"))):
        pytest.skip(f"no trained MaskGCT runs in {RUNS} (train experiments/maskgct_*_speech.py there)")
    from benchmarks.maskgct_voice import run

    out = run(t2s, s2a, per_voice=2, t2s_steps=(16,), s2a_steps=((10, 4, 1, 1),))
    by_name = {r["condition"]: r for r in out["results"]}
    prompted, no_prompt = by_name["MaskGCT, prompted"], by_name["no prompt (baseline)"]
    assert prompted["margin"] > 0
    assert prompted["nearest_voice_accuracy"] > max(2 * prompted["chance_accuracy"],
                                                    no_prompt["nearest_voice_accuracy"])


# ------------------------------------------------------------------------- CLI pieces

def test_prompt_wav_of_another_sample_rate_is_refused_naming_both(tmp_path):
    from maskgen import outputs
    from maskgen.generate import load_prompt

    tone = 0.3 * np.sin(np.linspace(0, 400 * np.pi, 11025)).astype(np.float32)
    path = outputs.write_wav(str(tmp_path / "p.wav"), tone, 22050)
    with pytest.raises(ValueError, match="is 22050 Hz, but the MaskGCT runs take 16000 Hz"):
        load_prompt(path, 16000)
    audio, text, voice = load_prompt(outputs.write_wav(str(tmp_path / "q.wav"), tone, 16000), 16000)
    assert audio.shape == (11025,) and text is None and voice is None


def test_audio_mask_continue_to_the_end():
    from maskgen.generate import audio_token_mask

    mask = audio_token_mask("time:0.5-", (50, 4), "audio", 0.02)
    assert mask[25:].all() and not mask[:25].any()
    with pytest.raises(ValueError, match="time:START- to the end"):
        audio_token_mask("time:0.5-x", (50, 4), "audio", 0.02)


def test_text_picks_the_word_of_a_class_conditional_audio_run():
    from types import SimpleNamespace

    from maskgen.generate import label_of_word

    handle = SimpleNamespace(decoder=SimpleNamespace(class_names=["zero", "one"]), info={}, workdir="/run")
    assert label_of_word(handle, "One ") == 1
    with pytest.raises(ValueError, match="not a word of /run: its words are zero, one"):
        label_of_word(handle, "two")


def test_prompt_boundary_option_uses_the_pairs_prompt_clip(t2s):
    import copy

    recipe = copy.copy(t2s[0])
    recipe.prompt_boundary_prob, recipe.prompt_drop = 1.0, 0.0
    valid = mg.valid_frame_mask(jnp.asarray([320, 300]), recipe.samples_per_frame, FRAMES)
    prompt, masked = recipe._draw_mask(jax.random.key(0), valid, jnp.asarray([160, 97]))
    np.testing.assert_array_equal(np.asarray(prompt).sum(-1), [10, 6])  # floor(samples / 16 per frame)
    assert not np.any(np.asarray(prompt & masked))
