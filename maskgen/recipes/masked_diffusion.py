"""Absorbing-state masked discrete diffusion on token sequences (text): MDLM / MD4.

References:
  MDLM: Sahoo et al., "Simple and Effective Masked Diffusion Language Models", arXiv 2406.07524
    (SUBS parameterisation, log-linear schedule, antithetic time sampling, no time conditioning,
    ancestral sampling with a cache of p(x0) when a step changed nothing).
  MD4: Shi et al., "Simplified and Generalized Masked Diffusion for Discrete Data", arXiv 2406.04329
    (the same continuous-time ELBO written as an integral over alpha'(t) / (1 - alpha(t)); linear and
    cosine schedules).
  Time-agnostic MDMs and the first-hitting sampler: Zheng et al., "Masked Diffusion Models are
    Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical Sampling",
    arXiv 2409.02908 (the optimal model ignores t; ancestral sampling is random-order one-at-a-time
    unmasking; float32 Gumbel sampling lowers the effective temperature).

Forward process: each token of x0 is independently replaced by [MASK] with probability
1 - alpha(t), t in [0, 1], alpha(0) = 1 (clean) and alpha(1) ~= 0 (all masked).

Objective (the negative ELBO, an upper bound on -log p(x0), in nats):

    L(x0) = E_{t ~ U(0,1), x_t ~ q(.|x0)} [ w(t) * sum_{i masked in x_t} -log p_theta(x0_i | x_t) ],
    w(t) = -alpha'(t) / (1 - alpha(t))            (= 1/t for alpha = 1 - t).

SUBS (MDLM Sec. 3.2): the network never puts mass on [MASK] (TokenTransformer's head has only the V
real ids, and `subs_log_probs` sets a [MASK] column to -inf where one exists), and unmasked
positions copy their input, so their term is exactly 0. Training reports the bound per token
(divided by L), so `loss` reads as nats/token of the bound.

Time sampling: t_i = (u + i/B) mod 1 over the batch (MDLM's antithetic / low-discrepancy draw),
mapped affinely onto [t_min, 1] so w(t) stays finite. The bound drops the sliver [0, t_min] but
over-weights the rest by 1/(1 - t_min); since the per-token loss grows with t, the estimate stays
an upper bound in expectation. With the log-linear schedule, alpha(1) = eps leaves a fraction
eps of the tokens unmasked at t = 1; their prior term (~eps * L * log V nats) is omitted, as in
MDLM.

Sampling is `maskgen.sampling.iterative_decode` (one decoder for every masked model):
"ancestral" (MDLM's sampler: each masked position is revealed with probability
(gamma(r_prev) - gamma(r)) / gamma(r_prev) per step, value from p(x0)), "ancestral_joint" (the
same step drawn as MDLM's code draws it, one (V+1)-way categorical "stay masked or token v"; with
precision="float32" it shows Zheng et al.'s entropy drop, which is why it exists), "first_hitting"
(Zheng et al.: one uniformly chosen masked position per step, L steps for L tokens, the same process
as ancestral in the limit of many steps), and "maskgit" (confidence order, for comparison). Known
tokens (prompts, infill) are never changed.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskgen.config import Problems, boolean, int_tuple, integer, number, one_of, recipe_problems, string
from maskgen.masking.schedules import mask_ratio
from maskgen.models.token_transformer import TokenTransformer
from maskgen.recipes.base import Recipe, register
from maskgen.sampling.categorical import PRECISIONS
from maskgen.sampling.iterative import iterative_decode

SCHEDULES = ("linear", "cosine", "loglinear")
# MDLM's log-linear schedule keeps alpha(1) = eps > 0 (sigma(t) = -log(1 - (1 - eps) t) stays finite).
LOGLINEAR_EPS = 1e-3
# Sampler name -> iterative_decode policy.
SAMPLERS = {"ancestral": "ancestral", "ancestral_joint": "ancestral_joint", "first_hitting": "first_hitting",
            "maskgit": "confidence"}
POSITIONS = ("learned", "rope")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# --------------------------------------------------------------------------------------------
# Schedules and the forward process (pure functions; tested against finite differences).
# --------------------------------------------------------------------------------------------
def alpha_and_derivative(schedule: str, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha(t), alpha'(t)) for t in [0, 1]: the probability that a token is still clean at t."""
    t = jnp.asarray(t, jnp.float32)
    if schedule == "linear":  # MD4
        return 1.0 - t, -jnp.ones_like(t)
    if schedule == "cosine":  # MD4: alpha = 1 - cos(pi/2 (1 - t))
        phase = 0.5 * math.pi * (1.0 - t)
        return 1.0 - jnp.cos(phase), -0.5 * math.pi * jnp.sin(phase)
    if schedule == "loglinear":  # MDLM: alpha = exp(-sigma(t)), sigma(t) = -log(1 - (1 - eps) t)
        return 1.0 - (1.0 - LOGLINEAR_EPS) * t, jnp.full_like(t, -(1.0 - LOGLINEAR_EPS))
    raise ValueError(f"unknown diffusion schedule {schedule!r}; valid: {SCHEDULES}")


def elbo_weight(schedule: str, t: jax.Array) -> jax.Array:
    """w(t) = -alpha'(t) / (1 - alpha(t)), the weight of the masked cross-entropy at time t."""
    alpha, d_alpha = alpha_and_derivative(schedule, t)
    # The cosine 1 - alpha = cos(pi/2 (1 - t)) loses all precision as 1 - cos(x) near t = 0; write
    # it directly so w stays accurate at small t_min.
    if schedule == "cosine":
        one_minus = jnp.cos(0.5 * math.pi * (1.0 - jnp.asarray(t, jnp.float32)))
    else:
        one_minus = 1.0 - alpha
    return -d_alpha / one_minus


def diffusion_times(rng: jax.Array, batch: int, *, antithetic: bool = True, t_min: float = 1e-3) -> jax.Array:
    """float32 [B] times in [t_min, 1].

    antithetic: t_i = (u + i/B) mod 1 with one u (MDLM): the B times are evenly spread over [0, 1),
    which lowers the variance of the batch's ELBO estimate at no cost. The affine map onto
    [t_min, 1] (not clipping) keeps them evenly spread.
    """
    if antithetic:
        u = jax.random.uniform(rng, ())
        raw = jnp.mod(u + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
    else:
        raw = jax.random.uniform(rng, (batch,))
    return t_min + (1.0 - t_min) * raw


def mask_tokens(rng: jax.Array, tokens: jax.Array, t: jax.Array, schedule: str,
                mask_token_id: int) -> tuple[jax.Array, jax.Array]:
    """Samples x_t ~ q(x_t | x0): each token masked independently w.p. 1 - alpha(t_b).

    tokens int [B, L], t [B] -> (inputs int32 [B, L] with [MASK] ids, masked bool [B, L]).
    """
    alpha, _ = alpha_and_derivative(schedule, t)
    masked = jax.random.uniform(rng, tokens.shape) >= alpha[:, None]
    return jnp.where(masked, mask_token_id, tokens).astype(jnp.int32), masked


def subs_log_probs(logits: jax.Array, inputs: jax.Array, mask_token_id: int) -> jax.Array:
    """MDLM's SUBS parameterisation: log p_theta(x0 | x_t), float32 [B, L, V].

    logits [B, L, V'] over V' >= mask_token_id ids. A [MASK] column (V' > mask_token_id) gets -inf:
    x0 is never [MASK] ("zero masking probabilities"). Unmasked positions copy their input
    ("carry-over unmasking"): log-prob 0 on the input token and -inf elsewhere, so their ELBO
    term is exactly 0 and the sampler can never change them.
    """
    logits = logits.astype(jnp.float32)
    ids = jnp.arange(logits.shape[-1])
    logits = jnp.where(ids == mask_token_id, -jnp.inf, logits)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    is_masked = (inputs == mask_token_id)[..., None]
    carried = jnp.where(ids == inputs[..., None], 0.0, -jnp.inf)
    return jnp.where(is_masked, log_probs, carried)


def masked_nll(logits: jax.Array, inputs: jax.Array, tokens: jax.Array, mask_token_id: int) -> jax.Array:
    """-log p_theta(x0_i | x_t) per position, float32 [B, L] (0 where x_t is unmasked, by SUBS)."""
    log_probs = subs_log_probs(logits, inputs, mask_token_id)
    return -jnp.take_along_axis(log_probs, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def elbo_per_example(logits_fn, tokens: jax.Array, t: jax.Array, rng: jax.Array, *, schedule: str,
                     mask_token_id: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One-sample estimate of the negative ELBO of each row, nats [B], at times t [B].

    logits_fn: tokens int32 [B, L] -> logits [B, L, V]. Also returns what the metrics need:
    {"masked" bool [B, L], "correct" bool [B, L]}.
    """
    inputs, masked = mask_tokens(rng, tokens, t, schedule, mask_token_id)
    logits = logits_fn(inputs)
    nll = masked_nll(logits, inputs, tokens, mask_token_id)
    # jnp.where, not a product: SUBS gives exactly 0 at unmasked positions already, but this keeps
    # an inf from a model that is certain and wrong out of the unmasked terms' gradients.
    per_example = elbo_weight(schedule, t) * jnp.sum(jnp.where(masked, nll, 0.0), axis=-1)
    correct = jnp.argmax(logits[..., :mask_token_id], axis=-1) == tokens
    return per_example, {"masked": masked, "correct": correct}


# --------------------------------------------------------------------------------------------
# Config rules.
# --------------------------------------------------------------------------------------------
CONFIG_SPEC = {
    "model.token_shape": int_tuple(1, length=1, why="(L,): the sequence length"),
    "model.vocab_size": integer(min=2),
    "model.width": integer(min=1),
    "model.depth": integer(min=1),
    "model.num_heads": integer(min=1),
    "model.mlp_ratio": number(0, min_open=True),
    "model.positions": one_of(*POSITIONS),
    "model.qk_norm": boolean(optional=True),
    "model.tie_head": boolean(optional=True),
    "loss.schedule": one_of(*SCHEDULES),
    "loss.antithetic": boolean(),
    "loss.t_min": number(0, 1, max_open=True, why="the smallest diffusion time drawn (w(t) ~ 1/t)"),
    "loss.likelihood_samples": integer(min=1, optional=True),
    "sampling.sampler": one_of(*SAMPLERS, optional=True),
    "sampling.num_steps": integer(min=1, optional=True),
    "sampling.schedule": string(nonempty=True, optional=True),
    "sampling.cache": boolean(optional=True),
    "sampling.precision": one_of(*PRECISIONS, optional=True),
    "sampling.temperature": number(0, min_open=True, optional=True),
    "sampling.choice_temperature": number(0, optional=True),
}


def text_problems(config: ml_collections.ConfigDict, data_info: dict[str, Any], spec: dict = CONFIG_SPEC,
                  vocab_key: str = "model.vocab_size") -> Problems:
    """The spec, then the model against the text: same vocabulary, same sequence length."""
    m, problems = config.model, recipe_problems(config, data_info, spec, needs="tokens")
    if problems.ok("model.width", "model.num_heads") and m.width % m.num_heads:
        problems.append(f"config.model.width={m.width} is not divisible by num_heads={m.num_heads}")
    if problems.ok("model.width", "model.num_heads", "model.positions") and m.positions == "rope" \
            and (m.width // m.num_heads) % 2:
        problems.append(f"positions='rope' needs an even head width, got {m.width // m.num_heads}")
    if problems.ok("model.width", "model.mlp_ratio") and int(m.width * m.mlp_ratio) < 1:
        problems.append(f"config.model.mlp_ratio={m.mlp_ratio} gives MLPs of width {int(m.width * m.mlp_ratio)}")
    if "sampling" in config and problems.ok("sampling.schedule") and config.sampling.get("schedule"):
        try:
            mask_ratio(config.sampling.schedule, 0.5, 2)
        except ValueError as err:
            problems.add("sampling.schedule", f"config.sampling.schedule={config.sampling.schedule!r}: {err}")
    if not problems.ok("data.name"):
        return problems
    vocab = data_info.get("vocab_size", data_info.get("codebook_size"))
    group, name = vocab_key.split(".")
    if problems.ok(vocab_key) and vocab is not None and config[group][name] != vocab:
        problems.add(vocab_key, f"the text's vocabulary is {vocab} ids, config.{vocab_key}={config[group][name]}")
    shape = tuple(data_info.get("token_shape") or ())
    if problems.ok("model.token_shape") and shape:
        length, positions = shape[-1], tuple(m.token_shape)[-1]
        if len(shape) != 1:
            problems.add("model.token_shape", f"the data are token grids {shape}; {config.recipe} models 1-D "
                                              "sequences (a text source)")
        elif length > positions:
            problems.add("model.token_shape", f"sequences of {length} tokens are longer than the model's "
                                              f"{positions} positions (config.model.token_shape="
                                              f"{tuple(m.token_shape)})")
        elif length < positions:
            problems.add("model.token_shape", f"sequences of {length} tokens are shorter than the model's "
                                              f"{positions} positions (config.model.token_shape="
                                              f"{tuple(m.token_shape)}); set it to ({length},)")
    if data_info.get("num_levels", 1) != 1:
        problems.append(f"the tokens have {data_info['num_levels']} residual levels; {config.recipe} models one "
                        "token per position")
    return problems


# --------------------------------------------------------------------------------------------
# The recipe.
# --------------------------------------------------------------------------------------------
@register("masked_diffusion")
class MaskedDiffusionRecipe(Recipe):
    """MDLM / MD4 on 1-D token sequences; see the module docstring."""

    capabilities = frozenset({"generate", "infill", "likelihood"})
    tasks = frozenset({"none", "prefix", "infill"})
    decode_options = ("sampler", "num_steps", "schedule", "cache", "precision", "temperature",
                      "choice_temperature")

    def __init__(self, *, seq_len: int, vocab_size: int, width: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, positions: str = "learned", qk_norm: bool = False, tie_head: bool = True,
                 schedule: str = "loglinear", antithetic: bool = True, t_min: float = 1e-3,
                 likelihood_samples: int = 4, compute_dtype: str = "float32", remat: str = "none",
                 sampling: dict | None = None):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown diffusion schedule {schedule!r}; valid: {SCHEDULES}")
        self.seq_len, self.vocab_size = int(seq_len), int(vocab_size)
        self.schedule, self.antithetic, self.t_min = schedule, bool(antithetic), float(t_min)
        self.likelihood_samples = int(likelihood_samples)
        self.sampling = dict(sampling or {})
        self.model_kwargs = dict(
            vocab_size=self.vocab_size, token_shape=(self.seq_len,), num_classes=0, conditioning="none",
            width=width, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, positions=positions,
            qk_norm=qk_norm, tie_head=tie_head, causal=False, dtype=_DTYPES[compute_dtype], remat=remat,
        )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]):
        m, loss = config.model, config.loss
        return cls(
            seq_len=tuple(m.token_shape)[0], vocab_size=m.vocab_size, width=m.width, depth=m.depth,
            num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, positions=m.positions,
            qk_norm=m.get("qk_norm", False), tie_head=m.get("tie_head", True),
            schedule=loss.schedule, antithetic=loss.antithetic, t_min=loss.t_min,
            likelihood_samples=loss.get("likelihood_samples", 4), compute_dtype=config.compute_dtype,
            remat=config.get("remat", "none"),
            sampling=config.sampling.to_dict() if "sampling" in config else {},
        )

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        return text_problems(config, data_info)

    def supported_tasks(self) -> frozenset:
        # Any subset of positions may be known: unconditional, prompted (prefix) and infill.
        return self.tasks

    def info(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "codebook_size": self.vocab_size, "token_shape": (self.seq_len,),
                "num_classes": 0, "sampling": self.sampling, "generator": "masked_diffusion",
                "tasks": sorted(self.tasks), "likelihood": "elbo"}

    def make_model(self, rngs: nnx.Rngs) -> TokenTransformer:
        return TokenTransformer(rngs=rngs, **self.model_kwargs)

    def _tokens(self, batch) -> jax.Array:
        tokens = batch["tokens"]
        if tokens.ndim != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(f"token sequences are {tuple(tokens.shape[1:])}, the model expects ({self.seq_len},)")
        return tokens.astype(jnp.int32)

    # ---- training -------------------------------------------------------------------------------
    def loss(self, model: TokenTransformer, batch, rng, step):
        tokens = self._tokens(batch)
        time_rng, mask_rng = jax.random.split(rng)
        t = diffusion_times(time_rng, tokens.shape[0], antithetic=self.antithetic, t_min=self.t_min)
        # No time conditioning (MDLM Sec. 3.3; Zheng et al.): the mask count already tells the
        # network how noisy x_t is, and the optimal model does not depend on t.
        per_example, aux = elbo_per_example(lambda x: model(x, None), tokens, t, mask_rng,
                                            schedule=self.schedule, mask_token_id=model.mask_token_id)
        loss = jnp.mean(per_example) / self.seq_len  # nats per token of the bound
        masked = aux["masked"].astype(jnp.float32)
        num_masked = jnp.maximum(jnp.sum(masked), 1.0)
        return loss, {"bits_per_token_bound": loss / math.log(2.0),
                      "masked_accuracy": jnp.sum(aux["correct"] * masked) / num_masked,
                      "mask_fraction": jnp.mean(masked)}

    def log_likelihood(self, model: TokenTransformer, batch, rng, num_samples: int | None = None):
        """The negative ELBO of each row (an upper bound on its NLL), nats: {"nll" [B], "num_tokens" [B]}.

        Averages `num_samples` (default `loss.likelihood_samples`) draws of t per row, antithetic
        along the draws (t_k = (u_b + k/K) mod 1), all K in one forward pass of K*B rows.
        """
        tokens = self._tokens(batch)
        b, k = tokens.shape[0], int(num_samples or self.likelihood_samples)
        time_rng, mask_rng = jax.random.split(rng)
        u = jax.random.uniform(time_rng, (1, b))
        offsets = jnp.arange(k, dtype=jnp.float32)[:, None] / k
        raw = jnp.mod(u + offsets, 1.0) if self.antithetic else jax.random.uniform(time_rng, (k, b))
        t = (self.t_min + (1.0 - self.t_min) * raw).reshape(k * b)
        per_example, _ = elbo_per_example(lambda x: model(x, None), jnp.tile(tokens, (k, 1)), t, mask_rng,
                                          schedule=self.schedule, mask_token_id=model.mask_token_id)
        return {"nll": jnp.mean(per_example.reshape(k, b), axis=0),
                "num_tokens": jnp.full((b,), self.seq_len, jnp.float32)}

    # ---- sampling -------------------------------------------------------------------------------
    def generate(self, model: TokenTransformer, batch, rng, *, sampler: str | None = None,
                 num_steps: int | None = None, schedule: str | None = None, cache: bool | None = None,
                 precision: str | None = None, temperature: float | None = None,
                 choice_temperature: float | None = None, **unused):
        """Samples the unknown positions of `batch["tokens"]` int [B, L] (`batch["known"]` bool
        [B, L], all False for unconditional samples). Settings default to `config.sampling`.

        Returns {"tokens" int32 [B, L], "nfe": network evaluations actually run}.
        """
        defaults = self.sampling
        sampler = sampler or defaults.get("sampler", "ancestral")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        tokens = self._tokens(batch)
        known = batch.get("known")
        known = jnp.zeros(tokens.shape, bool) if known is None else jnp.asarray(known, bool).reshape(tokens.shape)
        # First hitting reveals one position per step, so L steps fill any sequence (a step with
        # nothing left to reveal makes no network call when cached).
        steps = self.seq_len if sampler == "first_hitting" else int(num_steps or defaults.get("num_steps") or 128)
        extra = {}
        if sampler == "maskgit":
            extra["choice_temperature"] = (choice_temperature if choice_temperature is not None
                                           else defaults.get("choice_temperature", 4.5))
        result = iterative_decode(
            lambda x, cond: model(x, None), tokens=tokens, known=known, rng=rng, num_steps=steps,
            mask_token_id=model.mask_token_id, policy=SAMPLERS[sampler],
            schedule=schedule or defaults.get("schedule", "linear"),
            cache=bool(defaults.get("cache", True) if cache is None else cache),
            precision=precision or defaults.get("precision", "float64"),
            temperature=float(defaults.get("temperature", 1.0) if temperature is None else temperature),
            record_trajectory=False, **extra)
        return {"tokens": result.tokens, "nfe": result.nfe}


__all__ = ["MaskedDiffusionRecipe", "SCHEDULES", "SAMPLERS", "alpha_and_derivative", "elbo_weight",
           "diffusion_times", "mask_tokens", "subs_log_probs", "masked_nll", "elbo_per_example", "text_problems"]
