"""Masked discrete diffusion (MDLM arXiv 2406.07524, MD4 arXiv 2406.04329): schedules, SUBS, the
ELBO against a known entropy, antithetic times, training, infill, and the text evaluators."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskgen.recipes import masked_diffusion as md

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MDM_TEXT = os.path.join(REPO, "experiments", "mdm_text.py")


# ---- schedules --------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", md.SCHEDULES)
def test_schedule_ends_and_derivative(schedule):
    alpha, _ = md.alpha_and_derivative(schedule, jnp.array([0.0, 1.0]))
    assert alpha[0] == pytest.approx(1.0)
    assert alpha[1] == pytest.approx(0.0, abs=1.1e-3)  # log-linear keeps eps = 1e-3
    t = jnp.linspace(0.05, 0.95, 19)
    h = 1e-3
    finite = (md.alpha_and_derivative(schedule, t + h)[0] - md.alpha_and_derivative(schedule, t - h)[0]) / (2 * h)
    np.testing.assert_allclose(md.alpha_and_derivative(schedule, t)[1], finite, rtol=2e-3, atol=2e-3)
    assert np.all(np.diff(np.asarray(md.alpha_and_derivative(schedule, t)[0])) < 0)  # masks more as t grows


def test_linear_weight_is_one_over_t():
    t = jnp.array([0.01, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(md.elbo_weight("linear", t), 1.0 / t, rtol=1e-6)
    np.testing.assert_allclose(md.elbo_weight("loglinear", t), (1 - 1e-3) / ((1 - 1e-3) * t), rtol=1e-5)
    # cosine: w = (pi/2) tan(pi/2 (1 - t)), accurate even where 1 - alpha is tiny.
    np.testing.assert_allclose(md.elbo_weight("cosine", jnp.array([1e-4, 0.5])),
                               [math.pi / 2 / math.tan(math.pi / 2 * 1e-4), math.pi / 2], rtol=1e-3)


def test_antithetic_times_cover_the_interval_evenly():
    t = np.sort(np.asarray(md.diffusion_times(jax.random.key(3), 64, antithetic=True, t_min=1e-3)))
    assert t.min() >= 1e-3 and t.max() <= 1.0
    gaps = np.diff(t)
    np.testing.assert_allclose(gaps, (1 - 1e-3) / 64, rtol=1e-3)  # one point in each 1/B cell
    counts, _ = np.histogram(t, bins=8, range=(0, 1))
    assert np.all(counts == 8)


def test_mask_fraction_follows_alpha():
    tokens = jnp.zeros((4, 4096), jnp.int32)
    t = jnp.array([0.1, 0.4, 0.7, 0.95])
    inputs, masked = md.mask_tokens(jax.random.key(0), tokens, t, "linear", 9)
    np.testing.assert_allclose(np.mean(np.asarray(masked), axis=1), t, atol=0.03)
    assert np.all((np.asarray(inputs) == 9) == np.asarray(masked))


# ---- SUBS ---------------------------------------------------------------------------------------
def test_subs_no_mass_on_mask_and_unmasked_positions_copied():
    v, mask_id = 5, 5
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 6, v + 1)) * 3, jnp.float32)  # a head that has a [MASK] column
    logits = logits.at[..., mask_id].set(50.0)  # and tries hard to predict [MASK]
    inputs = jnp.array([[mask_id, 1, mask_id, 3, 4, mask_id], [0, mask_id, 2, mask_id, mask_id, 1]])
    probs = np.exp(np.asarray(md.subs_log_probs(logits, inputs, mask_id)))
    assert np.all(probs[..., mask_id] == 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    unmasked = np.asarray(inputs) != mask_id
    np.testing.assert_array_equal(probs[unmasked].argmax(-1), np.asarray(inputs)[unmasked])
    assert np.all(probs[unmasked].max(-1) == 1.0)
    # The per-position loss is exactly zero where the input is unmasked.
    nll = np.asarray(md.masked_nll(logits, inputs, jnp.where(inputs == mask_id, 2, inputs), mask_id))
    assert np.all(nll[unmasked] == 0.0) and np.all(nll[~unmasked] > 0)


# ---- the ELBO on a source with known entropy ------------------------------------------------------
def _iid_source(rng, n, length, p):
    return jnp.asarray(rng.choice(len(p), size=(n, length), p=p), jnp.int32)


@pytest.mark.parametrize("schedule", md.SCHEDULES)
def test_elbo_of_true_marginals_matches_entropy(schedule):
    """For i.i.d. tokens the best model predicts the marginal p; its ELBO per token is
    E[-log p(x)] = H(p) exactly (the integral of -alpha' is 1), and any other model scores more."""
    p = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625])
    entropy = -np.sum(p * np.log(p))
    tokens = _iid_source(np.random.default_rng(0), 4096, 32, p)
    mask_id = len(p)

    def model(log_q):
        return lambda x: jnp.broadcast_to(jnp.asarray(log_q, jnp.float32), x.shape + (len(p),))

    t = md.diffusion_times(jax.random.key(1), tokens.shape[0], antithetic=True, t_min=1e-3)
    true, _ = md.elbo_per_example(model(np.log(p)), tokens, t, jax.random.key(2), schedule=schedule,
                                  mask_token_id=mask_id)
    uniform, _ = md.elbo_per_example(model(np.zeros(len(p))), tokens, t, jax.random.key(2), schedule=schedule,
                                     mask_token_id=mask_id)
    per_token = float(jnp.mean(true)) / tokens.shape[1]
    # log-linear's alpha(1) = eps leaves eps of the tokens unscored (MDLM drops that prior term).
    assert per_token == pytest.approx(entropy, rel=0.02)
    assert float(jnp.mean(uniform)) / tokens.shape[1] > per_token + 0.1
    assert float(jnp.mean(uniform)) / tokens.shape[1] == pytest.approx(math.log(len(p)), rel=0.02)


# ---- the text evaluators' pieces -----------------------------------------------------------------
def test_unigram_entropy_and_per_token_summary():
    from maskgen.evaluators.text import per_token_summary, unigram_entropy

    h = unigram_entropy(np.array([[1, 1, 1, 1], [0, 1, 2, 3], [5, 5, 6, 6]]))
    np.testing.assert_allclose(h, [0.0, math.log(4), math.log(2)])
    s = per_token_summary(nll_sum=10 * math.log(2) * 3, num_tokens=10)
    assert s["bits_per_token"] == pytest.approx(3.0) and s["perplexity"] == pytest.approx(8.0)


# ---- the recipe ---------------------------------------------------------------------------------
class _Marginals:
    """A stand-in network that ignores its input and predicts fixed log-probabilities."""

    def __init__(self, log_p):
        self.log_p = jnp.asarray(log_p, jnp.float32)
        self.mask_token_id = len(log_p)

    def __call__(self, tokens, cond):
        return jnp.broadcast_to(self.log_p, tokens.shape + self.log_p.shape)


def _recipe(seq_len=16, vocab_size=5, **kwargs):
    return md.MaskedDiffusionRecipe(seq_len=seq_len, vocab_size=vocab_size, width=16, depth=1, num_heads=2, **kwargs)


def test_log_likelihood_is_the_entropy_bound_per_row():
    p = np.array([0.4, 0.3, 0.2, 0.1])
    tokens = _iid_source(np.random.default_rng(1), 256, 16, p)
    recipe = _recipe(seq_len=16, vocab_size=4, schedule="linear", likelihood_samples=8)
    out = recipe.log_likelihood(_Marginals(np.log(p)), {"tokens": tokens}, jax.random.key(0))
    assert out["nll"].shape == (256,) and np.all(np.asarray(out["num_tokens"]) == 16)
    exact = -np.sum(np.log(p)[np.asarray(tokens)], axis=1)  # the true NLL of each row under the marginals
    # Each row's estimate is unbiased for that row's NLL; averaged over rows it matches closely.
    assert float(np.mean(out["nll"])) == pytest.approx(float(np.mean(exact)), rel=0.02)
    loss, metrics = recipe.loss(_Marginals(np.log(p)), {"tokens": tokens}, jax.random.key(1), 0)
    assert float(loss) == pytest.approx(-np.sum(p * np.log(p)), rel=0.03)
    assert 0.4 < float(metrics["mask_fraction"]) < 0.6  # antithetic t: half of the tokens on average


@pytest.fixture
def mesh_context():
    from maskgen import parallel
    from maskgen.config import DEFAULT_SHARDING_RULES

    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        yield


@pytest.mark.parametrize("sampler", list(md.SAMPLERS))
def test_infill_keeps_known_tokens(sampler, mesh_context):
    from flax import nnx

    recipe = _recipe(seq_len=12, vocab_size=7)
    model = recipe.make_model(nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (3, 12), 0, 7)
    known = jnp.array([[True] * 4 + [False] * 8,  # a prompt
                       [True] * 3 + [False] * 6 + [True] * 3,  # infill between a prefix and a suffix
                       [False] * 12])  # unconditional
    out = jax.jit(lambda b, r: recipe.generate(model, b, r, sampler=sampler, num_steps=6))(
        {"tokens": tokens, "known": known}, jax.random.key(1))
    got = np.asarray(out["tokens"])
    np.testing.assert_array_equal(got[np.asarray(known)], np.asarray(tokens)[np.asarray(known)])
    assert got.min() >= 0 and got.max() < 7  # never [MASK], every position filled
    nfe = int(out["nfe"])
    assert 1 <= nfe <= (12 if sampler == "first_hitting" else 6)


@pytest.mark.parametrize("sampler", list(md.SAMPLERS))
def test_samplers_draw_from_the_model(sampler):
    """A network certain of token 3 everywhere: every unknown position becomes 3, known ones stay."""
    recipe = _recipe(seq_len=10, vocab_size=5)
    model = _Marginals(np.log([1e-9, 1e-9, 1e-9, 1.0, 1e-9]))
    tokens = jnp.tile(jnp.arange(10) % 3, (2, 1))
    known = jnp.array([[True] * 2 + [False] * 8, [False] * 10])
    out = recipe.generate(model, {"tokens": tokens, "known": known}, jax.random.key(0), sampler=sampler, num_steps=4)
    expected = np.where(np.asarray(known), np.asarray(tokens), 3)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), expected)


def test_config_problems_name_both_sides():
    from maskgen import config as config_lib
    from maskgen.data import source_info

    config = config_lib.load_config_file(f"{MDM_TEXT}:size=tiny")
    info = source_info("pydoc_text", None, {"seq_len": 64})
    assert md.MaskedDiffusionRecipe.validate(config, info) == []
    with config.unlocked():
        config.model.vocab_size = 300
    assert "the text's vocabulary is 257 ids, config.model.vocab_size=300" in " ".join(
        md.MaskedDiffusionRecipe.validate(config, info))
    with config.unlocked():
        config.model.vocab_size, config.data.seq_len = 257, 256
    problems = " ".join(md.MaskedDiffusionRecipe.validate(config, source_info("pydoc_text", None, {"seq_len": 256})))
    assert "sequences of 256 tokens are longer than the model's 64 positions" in problems


# ---- end to end: the loop, the text evaluators and the experiment file --------------------------
@pytest.fixture(scope="module")
def tiny_text_runs(tmp_path_factory):
    """A tiny masked-diffusion run and a tiny AR run on the same text (the Gen-PPL scorer)."""
    from maskgen import config as config_lib
    from maskgen.train import train

    root = tmp_path_factory.mktemp("text_runs")
    runs = {}
    for model, steps in (("mdm", 40), ("ar", 20)):
        config = config_lib.load_config_file(f"{MDM_TEXT}:size=tiny,steps={steps},seq_len=32,model={model}")
        config_lib.apply_overrides(config, ["log_every=5", "evals.samples.num_samples=2",
                                            "evals.samples.batch_size=2", "evals.likelihood.limit=1"])
        runs[model] = (str(root / model), train(config, str(root / model)))
    return runs


def test_tiny_training_lowers_the_bound_and_writes_samples(tiny_text_runs):
    import json

    workdir, result = tiny_text_runs["mdm"]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if '"loss"' in line]
    first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-2:]])
    assert first > math.log(257) - 0.3 and last < first - 0.8  # bytes: far below uniform after 40 steps
    scalars = result["evals"]["likelihood"].scalars
    assert 0 < scalars["bits_per_token"] < math.log2(257) + 0.5
    samples = result["evals"]["samples"]
    assert 0 < samples.scalars["unigram_entropy"] <= math.log(32) and samples.scalars["nfe"] >= 1
    assert samples.texts["samples"].startswith("=== sample 0 ===")
    # Written as a text file (and to TensorBoard) by the one text writer.
    with open(os.path.join(workdir, "texts", "samples_samples_0000040.txt"), encoding="utf-8") as f:
        assert f.read() == samples.texts["samples"]


def test_the_ar_baseline_scores_samples_through_the_eval_context(tiny_text_runs):
    """`text_samples` opens the AR run (ctx.open_run) and reports the samples' Gen PPL under it;
    `text_likelihood` on the AR run is its exact NLL."""
    from conftest import run_cli

    mdm, _ = tiny_text_runs["mdm"]
    ar, ar_result = tiny_text_runs["ar"]
    assert 0 < ar_result["evals"]["likelihood"].scalars["bits_per_token"] < math.log2(257) + 0.5
    result = run_cli("eval", "--workdir", mdm, f"--config.evals.samples.scorer_workdir={ar}",
                     "--config.evals.likelihood.every=-1")
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if "samples/gen_ppl" in l)
    assert 1.0 < float(line.split()[-1]) < 257 * 4  # a perplexity over 257 byte ids, from a barely trained AR


def test_sample_prints_text_and_edit_fills_only_the_span(tiny_text_runs, tmp_path):
    from conftest import run_cli

    workdir, _ = tiny_text_runs["mdm"]
    result = run_cli("sample", "--workdir", workdir, "--num", "2", "--sampler", "first_hitting")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("=== sample 0 ===") and "=== sample 1 ===" in result.stdout
    assert os.path.exists(os.path.join(workdir, "samples.txt"))
    out = str(tmp_path / "edit.txt")
    result = run_cli("edit", "--workdir", workdir, "--prefix", "The value ", "--span", "6", "--suffix", " is.",
                     "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    edited = open(out, encoding="utf-8").read()
    assert edited.startswith("The value ") and edited.endswith(" is.")
    assert len(edited.encode("utf-8", errors="replace")) >= len("The value  is.")
    # A span that does not fit, and image flags on a text run, are refused with the reason.
    result = run_cli("edit", "--workdir", workdir, "--prefix", "x" * 30, "--span", "6", "--out", out)
    assert result.returncode == 1 and "longer than the model's 32 positions" in result.stderr
    result = run_cli("edit", "--workdir", workdir, "--image", "test:0", "--mask", "bottom", "--out", out)
    assert result.returncode == 1 and "generates text: give --prefix" in result.stderr


def test_owt_config_is_mdlm_small_and_its_tiny_variant_validates():
    from maskgen import config as config_lib
    from maskgen.data import source_info

    full = config_lib.load_config_file(os.path.join(REPO, "experiments", "mdm_owt.py") + ":data_dir=/nowhere")
    m = full.model
    assert (m.depth, m.width, m.num_heads, tuple(m.token_shape)) == (12, 768, 12, (1024,))
    assert (full.batch_size, full.optimizer.lr, full.total_steps) == (512, 3e-4, 1_000_000)
    assert full.data.name == "tfds:openwebtext" and full.loss.schedule == "loglinear"
    tiny = config_lib.load_config_file(os.path.join(REPO, "experiments", "mdm_owt.py") + ":size=tiny")
    assert md.MaskedDiffusionRecipe.validate(tiny, source_info("pydoc_text", None, {"seq_len": 64})) == []
