"""Quantizers for image/audio tokenizers, as Flax NNX modules that are plain trees.

All quantizers share one interface (`Quantizer`): `z [..., D] -> (z_q [..., D], codes, aux)`, with
a straight-through gradient from `z_q` to `z`, integer codes, and a dict of float32 scalars whose
`"loss"` entry is the weighted quantizer loss to add to the reconstruction loss.

  VectorQuantizer  VQ-VAE (van den Oord et al., arXiv 1711.00937): nearest code, commitment and
                   codebook losses or an EMA codebook; optional cosine (l2-normalised) codes as in
                   ViT-VQGAN (Yu et al., arXiv 2110.04627); k-means init and dead-code restarts as in
                   SoundStream (Zeghidour et al., arXiv 2107.03312) and EnCodec (arXiv 2210.13438).
  ResidualVQ       SoundStream / EnCodec / DAC (Kumar et al., arXiv 2306.06546): each level quantises
                   the residual of the previous one; quantizer dropout for a scalable bitrate;
                   optionally DAC's factorised codes (a low-dim lookup space, `codebook_dim`).
  FSQ              Finite Scalar Quantization (Mentzer et al., arXiv 2309.15505): no codebook, no loss.
  LFQ              Lookup-Free Quantization (MAGVIT-v2, Yu et al., arXiv 2310.05737): signs of the
                   latent dims, with an entropy loss over the 2**dim implicit codes.

State. Trainable codebooks are `nnx.Param`s (logical axes `("codebook", None)`, so the sharding
rules must name `"codebook"`, normally `("codebook", None)`). Everything else a quantizer keeps
(EMA statistics, per-code usage, the k-means flag) is a `CodebookState` variable, updated in place
when `train=True` and never when `train=False`. In train mode the codebook *parameter* may also be
overwritten in place (k-means init, EMA codebook, dead-code restarts); a functional caller must take
the parameters and the `CodebookState` back out of the module after the call:

    graphdef, params, state = nnx.split(quantizer, nnx.Param, CodebookState)
    def loss_fn(params, state, z, rng):                  # params/state: pure dicts under jax.grad
        q = nnx.merge(graphdef, params, state)
        z_q, codes, aux = q(z, train=True, rng=rng)
        _, new_params, new_state = nnx.split(q, nnx.Param, CodebookState)
        return aux["loss"], (nnx.to_pure_dict(new_params), nnx.to_pure_dict(new_state))

Under `jax.grad`, pass the non-differentiated state as a pure dict (`nnx.to_pure_dict`) or merge
with `copy=True`: an `nnx.State` holds `Variable` objects created outside the grad trace, and NNX
refuses to mutate those inside it. All state updates are computed from stop-gradient values.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskgen.models.layers import Dense, logical_param

_LAPLACE_EPS = 1e-5      # Laplace smoothing of EMA cluster sizes (VQ-VAE appendix A.1)
_NORM_EPS = 1e-12        # floor of vector norms in l2 normalisation
_RESTART_NOISE = 1e-3    # restarted codes: a batch vector + this x its rms x N(0, 1) noise
_HIST_MAX_CODES = 1 << 20  # histogram-based diagnostics (perplexity, usage) up to this many codes
_CHUNK_ELEMENTS = 1 << 22  # LFQ batch entropy: rows x codes per chunk (16 MiB of float32)
_FSQ_EPS = 1e-3          # FSQ's bound margin, (L - 1)(1 - eps)/2 (the paper's code)


class CodebookState(nnx.Variable):
    """Non-trainable quantizer state (EMA stats, usage, init flag)."""


class Quantizer(nnx.Module):
    """Common base of the quantizers: `z [..., D] -> (z_q, codes, aux)` and `decode_codes(codes)`.

    `codebook_size` is the number of distinct codes per level, `num_levels` 1, or K for residual VQ.
    """

    codebook_size: int
    num_levels: int = 1

    def __call__(self, z: jax.Array, *, train: bool, rng: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array, dict]:
        """z: float [..., D] (channels last). Returns (z_q [..., D], int32 codes [...] or [..., K], aux).

        `z_q` has the value of the quantised vectors and a straight-through gradient to `z`.
        `aux["loss"]` is the weighted total to add to the reconstruction loss; the other keys are its
        unweighted components and diagnostics. `train=True` updates non-trainable state in place;
        `train=False` changes nothing. `rng` is needed in train mode where randomness is used.
        """
        raise NotImplementedError

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """Codes as returned by `__call__` -> the quantised vectors [..., D] (no gradient trick)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- helpers


def _straight_through(q: jax.Array, z: jax.Array) -> jax.Array:
    """Value exactly `q`, gradient exactly identity to `z` (= z + sg(q - z) without its rounding)."""
    return jax.lax.stop_gradient(q) + (z - jax.lax.stop_gradient(z))


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), _NORM_EPS))


def _dot_t(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b.T at full float32 precision: TPU (bf16 passes) and GPU (TF32) defaults would change
    nearest-code choices and, divided by a small temperature, the LFQ logits."""
    return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)


def _sq_distances(x: jax.Array, codebook: jax.Array) -> jax.Array:
    """||x_n - c_k||^2 for x [N, D], codebook [K, D] -> [N, K] (float32, via the dot-product form)."""
    return (jnp.sum(jnp.square(x), -1, keepdims=True) - 2.0 * _dot_t(x, codebook)
            + jnp.sum(jnp.square(codebook), -1)[None, :])


def _nearest(x: jax.Array, codebook: jax.Array) -> jax.Array:
    return jnp.argmin(_sq_distances(x, codebook), axis=-1).astype(jnp.int32)


def _code_counts(codes: jax.Array, num_codes: int) -> jax.Array:
    """Float32 histogram of flat int codes over [0, num_codes)."""
    codes = codes.reshape(-1)
    return jax.ops.segment_sum(jnp.ones(codes.shape, jnp.float32), codes, num_segments=num_codes)


def _entropy(p: jax.Array, axis: int = -1) -> jax.Array:
    """-sum p log p (natural log), with 0 log 0 = 0 and finite gradients at p = 0."""
    return -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=axis)


def vq_entropy(logits: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """MaskGIT's VQ entropy loss (maskgit/libml/losses.py `entropy_loss`, "softmax" type) for
    logits [N, K] = -distances / temperature: mean per-row entropy minus the entropy of the mean
    distribution, the latter with log(p + 1e-5) as in the reference. `weight` [N] (0/1) selects rows."""
    weight = jnp.ones(logits.shape[:1], jnp.float32) if weight is None else weight
    total = jnp.maximum(weight.sum(), 1.0)
    probs = jax.nn.softmax(logits, axis=-1)
    sample_entropy = jnp.sum(weight * -jnp.sum(probs * jax.nn.log_softmax(logits, axis=-1), -1)) / total
    mean_probs = jnp.sum(weight[:, None] * probs, axis=0) / total
    return sample_entropy - (-jnp.sum(mean_probs * jnp.log(mean_probs + 1e-5)))


def _usage_stats(counts: jax.Array) -> dict[str, jax.Array]:
    """perplexity = exp(entropy of the batch code histogram); usage = fraction of codes used."""
    p = counts / jnp.maximum(counts.sum(), 1.0)
    return {"perplexity": jnp.exp(_entropy(p)), "usage": jnp.mean((counts > 0).astype(jnp.float32))}


def _smoothed_cluster_size(cluster_size: jax.Array) -> jax.Array:
    """Laplace-smoothed EMA cluster sizes: (N_k + eps) / (n + K eps) * n with n = sum_k N_k."""
    n = cluster_size.sum()
    return (cluster_size + _LAPLACE_EPS) / (n + cluster_size.shape[0] * _LAPLACE_EPS) * n


def _kmeans(x: jax.Array, num_codes: int, iters: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Lloyd's k-means on x [N, D] with static shapes -> (centroids [K, D], cluster sizes [K]).

    Initial centroids are distinct random rows of x (rows drawn with replacement when N < K); a
    cluster that ends up empty keeps its previous centroid.
    """
    n = x.shape[0]
    if n >= num_codes:  # K distinct rows: the top K of N uniform draws
        idx = jax.lax.top_k(jax.random.uniform(key, (n,)), num_codes)[1]
    else:
        idx = jax.random.randint(key, (num_codes,), 0, n)
    centroids = x[idx]

    def step(_, c):
        assign = _nearest(x, c)
        sums = jax.ops.segment_sum(x, assign, num_segments=num_codes)
        counts = jax.ops.segment_sum(jnp.ones((n,), jnp.float32), assign, num_segments=num_codes)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)

    centroids = jax.lax.fori_loop(0, iters, step, centroids)
    return centroids, _code_counts(_nearest(x, centroids), num_codes)


def _need_rng(rng, who: str, why: str) -> None:
    if rng is None:
        raise ValueError(f"{who}(train=True) needs rng= ({why})")


# ----------------------------------------------------------------------------- VQ


class VectorQuantizer(Quantizer):
    """Vector quantizer: nearest of `codebook_size` learned codes (VQ-VAE, van den Oord et al., arXiv 1711.00937).

    Losses (means over all elements, i.e. MSE; `z` here is l2-normalised when `l2_normalize`):
      commitment = mean((z - sg(q))^2)                     weighted by `commitment_weight`
      codebook   = mean((sg(z) - q)^2), only without EMA    weighted by `codebook_weight`
    aux: loss, commitment, codebook (0 with EMA), entropy and entropy_loss (0 unless entropy_weight > 0),
    perplexity, usage, dead_codes_restarted (0 when `train=False`).

    Options:
      l2_normalize: cosine codes (ViT-VQGAN, arXiv 2110.04627): z and the codebook are l2-normalised
        before the distance and z_q is the normalised code.
      use_ema: the codebook is an EMA of the vectors assigned to each code (VQ-VAE appendix A.1):
        N_k <- d N_k + (1-d) n_k, m_k <- d m_k + (1-d) sum_{z->k} z, code_k = m_k / N~_k with
        Laplace-smoothed N~_k; the codebook parameter then gets no gradient (it is stop-gradient'ed)
        and is overwritten in place in train mode. Exclude it from weight decay in the optimizer.
      kmeans_init: the first train call replaces the codebook by `kmeans_iters` iterations of k-means
        on that batch's vectors (SoundStream, arXiv 2107.03312).
      entropy_weight, entropy_temperature: the entropy loss of MaskGIT's VQGAN (maskgit/libml/losses.py
        `entropy_loss`, weight 0.1 and temperature 0.01 there; 0 = off): with p(k | z) =
        softmax_k(-||z - c_k||^2 / temperature), entropy = mean_z H(p(. | z)) - H(mean_z p(. | z)),
        the second entropy with the reference's log(p + 1e-5). It sharpens each assignment and spreads
        the batch over the codebook; its gradient reaches z and the codebook. Added to `loss` as
        entropy_weight * entropy (aux `entropy` unweighted, `entropy_loss` weighted).
      codebook_dim: factorised codes (DAC, arXiv 2306.06546, section 3.2; 8 there): a linear map
        `in_proj` (dim -> codebook_dim) projects z to a low-dimensional space where the lookup, the
        losses, k-means, EMA and restarts all happen (with `l2_normalize`, on the unit sphere of that
        space: DAC's l2-normalised codes), and `out_proj` (codebook_dim -> dim) maps the chosen code
        back. z_q = out_proj(straight-through code), so both projections train; `decode_codes` is
        out_proj(code). None (default): no projections, the lookup is in z's own space.
      restart_dead_codes: `usage` is an EMA (decay `ema_decay`) of each code's share of the batch's
        vectors in units of the uniform share, `usage_k <- d usage_k + (1-d) K n_k / N` (1.0 = used
        by 1/K of the vectors; it starts at 1.0). In train mode every code whose usage falls below
        `dead_code_threshold` is replaced by a random vector of the current batch plus tiny noise,
        and its usage (and EMA statistics) are reset to the uniform share.

    Variables: `codebook` (Param [K, D], axes ("codebook", None); D = codebook_dim when factorised,
    with the `in_proj` / `out_proj` Dense params); CodebookState `usage` [K],
    `initialized` (int32 scalar, 1 once k-means has run or when `kmeans_init=False`), and with
    `use_ema` also `cluster_size` [K] and `embed_sum` [K, D].
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        rngs: nnx.Rngs,
        l2_normalize: bool = False,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        use_ema: bool = False,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 1e-3,
        restart_dead_codes: bool = True,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01,
        codebook_dim: int | None = None,
    ):
        if dim < 1 or codebook_size < 2:
            raise ValueError(f"VectorQuantizer needs dim >= 1 and codebook_size >= 2, got {dim}, {codebook_size}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if entropy_weight < 0 or entropy_temperature <= 0:
            raise ValueError(f"VectorQuantizer needs entropy_weight >= 0 and entropy_temperature > 0, got "
                             f"{entropy_weight}, {entropy_temperature}")
        if codebook_dim is not None and codebook_dim < 1:
            raise ValueError(f"VectorQuantizer codebook_dim must be None or >= 1, got {codebook_dim}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.num_levels = 1
        self.factorised = codebook_dim is not None
        self.code_dim = codebook_dim if self.factorised else dim  # where codes live
        self.l2_normalize = l2_normalize
        self.commitment_weight = float(commitment_weight)
        self.codebook_weight = float(codebook_weight)
        self.use_ema = use_ema
        self.ema_decay = float(ema_decay)
        self.kmeans_init = kmeans_init
        self.kmeans_iters = int(kmeans_iters)
        self.dead_code_threshold = float(dead_code_threshold)
        self.restart_dead_codes = restart_dead_codes
        self.entropy_weight = float(entropy_weight)
        self.entropy_temperature = float(entropy_temperature)

        self.codebook = logical_param(
            rngs, jax.nn.initializers.normal(1.0), (codebook_size, self.code_dim), ("codebook", None)
        )
        # Created after the codebook, so non-factorised quantizers draw exactly the values they did.
        self.in_proj = Dense((dim,), (self.code_dim,), (None, None), rngs=rngs) if self.factorised else None
        self.out_proj = Dense((self.code_dim,), (dim,), (None, None), rngs=rngs) if self.factorised else None
        self.usage = CodebookState(jnp.ones((codebook_size,), jnp.float32), out_sharding=("codebook",))
        self.initialized = CodebookState(jnp.asarray(0 if kmeans_init else 1, jnp.int32))
        if use_ema:
            self.cluster_size = CodebookState(jnp.ones((codebook_size,), jnp.float32), out_sharding=("codebook",))
            self.embed_sum = CodebookState(jnp.array(self.codebook[...]), out_sharding=("codebook", None))

    def _prepare(self, x: jax.Array) -> jax.Array:
        return _l2_normalize(x) if self.l2_normalize else x

    def code_vectors(self) -> jax.Array:
        """The codebook as used for lookup: [K, D], l2-normalised when `l2_normalize`."""
        return self._prepare(self.codebook[...].astype(jnp.float32))

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        vectors = jnp.take(self.code_vectors(), codes, axis=0)
        return self.out_proj(vectors).astype(jnp.float32) if self.factorised else vectors

    def __call__(self, z, *, train: bool, rng: jax.Array | None = None):
        return self._quantize(z, train=train, rng=rng, mask=None)

    def _quantize(self, z, *, train: bool, rng, mask):
        """The call, where `mask` (None, or float [N] of 0/1 per flattened vector: ResidualVQ's
        per-example dropout) says which vectors this level quantises: losses and statistics count
        only those (losses stay means over all N vectors, zeros for the others, as DAC does), and
        the state is updated from them (left untouched when there are none)."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"VectorQuantizer(dim={self.dim}) got input with last axis {z.shape[-1]}")
        if not self.factorised:
            return self._lookup(z, train=train, rng=rng, mask=mask)
        z_low = self.in_proj(z.astype(jnp.float32)).astype(jnp.float32)
        z_q_low, codes, aux = self._lookup(z_low, train=train, rng=rng, mask=mask)
        return self.out_proj(z_q_low).astype(z.dtype), codes, aux

    def _lookup(self, z, *, train: bool, rng, mask):
        """Nearest code of z [..., code_dim] (the quantizer in the space its codes live in)."""
        sg = jax.lax.stop_gradient
        K, lead = self.codebook_size, z.shape[:-1]
        flat = z.astype(jnp.float32).reshape(-1, self.code_dim)
        n = flat.shape[0]
        x = self._prepare(flat)
        x_sg = sg(x)
        cb_param = self.codebook[...].astype(jnp.float32)
        weight = jnp.ones((n,), jnp.float32) if mask is None else sg(mask.astype(jnp.float32).reshape(n))
        n_active = weight.sum()
        active = n_active > 0

        if train and (self.kmeans_init or self.restart_dead_codes):
            _need_rng(rng, "VectorQuantizer", "k-means init and dead-code restarts sample batch vectors")
        if train:
            key_kmeans, key_idx, key_noise = jax.random.split(rng, 3) if rng is not None else (None,) * 3

        # 1. k-means init on the first train call (only then: the flag is set afterwards).
        kmeans_fired = jnp.asarray(False)
        kmeans_counts = jnp.zeros((K,), jnp.float32)
        cb_new = sg(cb_param)
        if train and self.kmeans_init:
            kmeans_fired = self.initialized[...] == 0
            cb_new, kmeans_counts = jax.lax.cond(
                kmeans_fired,
                lambda: _kmeans(x_sg, K, self.kmeans_iters, key_kmeans),
                lambda: (sg(cb_param), jnp.zeros((K,), jnp.float32)),
            )
        # The codebook used now: gradient flows to the parameter unless it is an EMA codebook.
        cb_used = sg(cb_new) if self.use_ema else cb_param + sg(cb_new - cb_param)
        cb_vec = self._prepare(cb_used)

        # 2. Nearest code, losses, straight-through output.
        codes = _nearest(x_sg, sg(cb_vec))
        q = jnp.take(cb_vec, codes, axis=0)
        commitment = jnp.mean(weight[:, None] * jnp.square(x - sg(q)))
        codebook_loss = (jnp.zeros((), jnp.float32) if self.use_ema
                         else jnp.mean(weight[:, None] * jnp.square(x_sg - q)))
        entropy = jnp.zeros((), jnp.float32)
        if self.entropy_weight > 0:
            entropy = vq_entropy(-_sq_distances(x, cb_vec) / self.entropy_temperature, weight)
        z_q = _straight_through(q, flat)
        counts = jax.ops.segment_sum(weight, codes, num_segments=K)
        aux = {
            "loss": (self.commitment_weight * commitment + self.codebook_weight * codebook_loss
                     + self.entropy_weight * entropy),
            "commitment": commitment,
            "codebook": codebook_loss,
            "entropy": entropy,
            "entropy_loss": self.entropy_weight * entropy,
            **_usage_stats(counts),
            "dead_codes_restarted": jnp.zeros((), jnp.float32),
        }

        # 3. State updates (train only), all from stop-gradient values.
        if train:
            d = self.ema_decay
            if self.use_ema:
                cs0 = jnp.where(kmeans_fired, kmeans_counts, self.cluster_size[...])
                es0 = jnp.where(kmeans_fired, cb_new * _smoothed_cluster_size(kmeans_counts)[:, None],
                                self.embed_sum[...])
                sums = jax.ops.segment_sum(weight[:, None] * x_sg, codes, num_segments=K)
                cluster_size = d * cs0 + (1.0 - d) * counts
                embed_sum = d * es0 + (1.0 - d) * sums
                cb_new = embed_sum / _smoothed_cluster_size(cluster_size)[:, None]
            usage = d * self.usage[...] + (1.0 - d) * counts * (K / jnp.maximum(n_active, 1.0))
            if self.restart_dead_codes:
                dead = usage < self.dead_code_threshold
                # Candidates: random vectors among those this level quantised (all of them without a
                # mask: the same draws as before masks existed, so unmasked runs are unchanged).
                if mask is None:
                    idx = jax.random.randint(key_idx, (K,), 0, n)
                    rms = jnp.sqrt(jnp.mean(jnp.square(x_sg)))
                else:
                    idx = jax.random.categorical(key_idx, jnp.log(weight), shape=(K,))
                    rms = jnp.sqrt(jnp.sum(weight[:, None] * jnp.square(x_sg))
                                   / (jnp.maximum(n_active, 1.0) * self.code_dim))
                candidates = x_sg[idx] + _RESTART_NOISE * rms * jax.random.normal(key_noise, (K, self.code_dim))
                cb_new = jnp.where(dead[:, None], candidates, cb_new)
                usage = jnp.where(dead, 1.0, usage)
                if self.use_ema:
                    cluster_size = jnp.where(dead, cluster_size.sum() / K, cluster_size)
                    restarted_sums = candidates * _smoothed_cluster_size(cluster_size)[:, None]
                    embed_sum = jnp.where(dead[:, None], restarted_sums, embed_sum)
                aux["dead_codes_restarted"] = jnp.where(active, dead.sum(), 0).astype(jnp.float32)

            def keep_unless_inactive(new, old):
                return sg(jnp.where(active, new, old)).astype(old.dtype)

            if self.use_ema or self.kmeans_init or self.restart_dead_codes:
                self.codebook[...] = keep_unless_inactive(cb_new, self.codebook[...])
            self.usage[...] = keep_unless_inactive(usage, self.usage[...])
            self.initialized[...] = keep_unless_inactive(jnp.ones((), jnp.int32), self.initialized[...])
            if self.use_ema:
                self.cluster_size[...] = keep_unless_inactive(cluster_size, self.cluster_size[...])
                self.embed_sum[...] = keep_unless_inactive(embed_sum, self.embed_sum[...])

        return z_q.reshape(z.shape).astype(z.dtype), codes.reshape(lead), aux


# ----------------------------------------------------------------------------- RVQ


class ResidualVQ(Quantizer):
    """Residual vector quantizer (SoundStream arXiv 2107.03312, EnCodec arXiv 2210.13438, DAC arXiv 2306.06546).

    `num_levels` VectorQuantizers (built with `**vq_kwargs`); level k quantises r_k, with r_0 = z and
    r_{k+1} = r_k - zq_k (zq_k: level k's straight-through output, as in EnCodec/DAC, so deeper
    commitment losses train the codebooks but send no gradient to z). z_q = sum of the used levels'
    codes, with a straight-through gradient to z; codes [..., K].

    Quantizer dropout (train only), per example as in DAC (`quantizer_dropout` in its
    ResidualVectorQuantize): a fraction `quantizer_dropout` of the examples (floor(B p) of the B
    examples along axis 0, chosen at random) each draw their number of levels n_b uniformly from
    1..K; the others use all K. For example b, levels k >= n_b still compute (their codes of the true
    residual are returned), but add nothing to its z_q, and its vectors count in neither that
    level's losses (means over all vectors with zeros for dropped ones, DAC's `(loss * mask).mean()`)
    nor its statistics and state updates (a level used by no example is left untouched).

    Factorised codes (`codebook_dim`, DAC): each level's output passes through its own `out_proj`,
    so z_q is the sum of the used levels' outputs *with* their gradients (DAC's
    `z_q = z_q + z_q_i * mask`, and r_{k+1} = r_k - zq_k), not the straight-through sum above:
    otherwise the projections would get no gradient from the decoder.

    aux: loss, commitment, codebook and entropy_loss (sums over levels of each level's terms),
    perplexity and usage (means over the levels some example used), dead_codes_restarted (sum),
    num_levels_used (mean over examples), and per level `perplexity_level{k}`, `commitment_level{k}`.
    """

    def __init__(self, dim: int, codebook_size: int, num_levels: int, *, rngs: nnx.Rngs,
                 quantizer_dropout: float = 0.0, **vq_kwargs):
        if num_levels < 1:
            raise ValueError(f"ResidualVQ needs num_levels >= 1, got {num_levels}")
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.num_levels = num_levels
        self.quantizer_dropout = float(quantizer_dropout)
        self.quantizers = nnx.List(
            [VectorQuantizer(dim, codebook_size, rngs=rngs, **vq_kwargs) for _ in range(num_levels)]
        )
        self.factorised = vq_kwargs.get("codebook_dim") is not None

    def levels_per_example(self, batch: int, rng: jax.Array) -> jax.Array:
        """int32 [batch]: how many levels each example uses in a train step (DAC's quantizer dropout)."""
        num_dropped = int(batch * self.quantizer_dropout)
        key_pick, key_levels = jax.random.split(rng)
        dropped = jnp.argsort(jax.random.uniform(key_pick, (batch,))) < num_dropped
        drawn = jax.random.randint(key_levels, (batch,), 1, self.num_levels + 1)
        return jnp.where(dropped, drawn, self.num_levels).astype(jnp.int32)

    def __call__(self, z, *, train: bool, rng: jax.Array | None = None):
        K = self.num_levels
        needs_rng = train and (self.quantizer_dropout > 0 or any(
            q.kmeans_init or q.restart_dead_codes for q in self.quantizers))
        if needs_rng:
            _need_rng(rng, "ResidualVQ", "quantizer dropout, k-means init and dead-code restarts are random")
        keys = jax.random.split(rng, K + 1) if needs_rng else [None] * (K + 1)
        batch = z.shape[0] if z.ndim > 1 else 1
        n_used = jnp.full((batch,), K, jnp.int32)
        if train and self.quantizer_dropout > 0:
            n_used = self.levels_per_example(batch, keys[0])
        vectors_per_example = math.prod(z.shape[1:-1]) if z.ndim > 1 else 1

        z32 = z.astype(jnp.float32)
        residual, total = z32, jnp.zeros_like(z32)
        codes, aux = [], {}
        sums = {"loss": 0.0, "commitment": 0.0, "codebook": 0.0, "entropy_loss": 0.0, "perplexity": 0.0,
                "usage": 0.0, "dead_codes_restarted": 0.0}
        levels_on = 0.0
        for k, quantizer in enumerate(self.quantizers):
            uses = k < n_used  # [batch]
            mask = jnp.repeat(uses.astype(jnp.float32), vectors_per_example)
            zq_k, codes_k, aux_k = quantizer._quantize(residual, train=train, rng=keys[k + 1], mask=mask)
            zq_k = zq_k.astype(jnp.float32)
            per_vector = uses.reshape((-1,) + (1,) * (z.ndim - 1)) if z.ndim > 1 else uses
            total = total + jnp.where(per_vector, zq_k if self.factorised else jax.lax.stop_gradient(zq_k), 0.0)
            residual = residual - zq_k
            codes.append(codes_k)
            on = jnp.any(uses).astype(jnp.float32)
            levels_on = levels_on + on
            for key in ("loss", "commitment", "codebook", "entropy_loss", "dead_codes_restarted"):
                sums[key] = sums[key] + aux_k[key]
            for key in ("perplexity", "usage"):
                sums[key] = sums[key] + on * aux_k[key]
            aux[f"perplexity_level{k}"] = on * aux_k["perplexity"]
            aux[f"commitment_level{k}"] = aux_k["commitment"]
        aux.update(
            loss=sums["loss"], commitment=sums["commitment"], codebook=sums["codebook"],
            entropy_loss=sums["entropy_loss"], perplexity=sums["perplexity"] / levels_on,
            usage=sums["usage"] / levels_on, dead_codes_restarted=sums["dead_codes_restarted"],
            num_levels_used=n_used.astype(jnp.float32).mean(),
        )
        z_q = (total if self.factorised else _straight_through(total, z32)).astype(z.dtype)
        return z_q, jnp.stack(codes, axis=-1), {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}

    def decode_codes(self, codes: jax.Array, num_levels: int | None = None) -> jax.Array:
        """codes [..., K] -> sum of the first `num_levels` (default all) levels' code vectors."""
        num_levels = self.num_levels if num_levels is None else num_levels
        if not 1 <= num_levels <= self.num_levels:
            raise ValueError(f"num_levels must be in [1, {self.num_levels}], got {num_levels}")
        return sum(self.quantizers[k].decode_codes(codes[..., k]) for k in range(num_levels))


# ----------------------------------------------------------------------------- FSQ


class FSQ(Quantizer):
    """Finite Scalar Quantization (Mentzer et al., arXiv 2309.15505): each dim bounded and rounded to L_i levels.

    dim = len(levels), codebook_size = prod(levels); no parameters, no state, no loss.
    Bounding, as in the paper's code (arXiv 2309.15505, appendix A.1): with
    h_i = (L_i - 1)(1 - 1e-3)/2, offset o_i = 0.5 for even L_i (0 for odd) and shift
    s_i = tan(o_i / h_i), bound(z) = tanh(z + s) h - o, which rounds to the L_i integers
    {-floor(L_i/2), ..., ceil(L_i/2) - 1}; z_q = round_ste(bound(z)) / floor(L_i/2), so z_q lies in
    [-1, 1]. (The (1 - eps) keeps bound(z) strictly inside the outer rounding boundaries, and
    tan(o/h) is the paper's shift, not the exact atanh(o/h): for even L the zero of bound(z) sits
    slightly off z = 0, as in the reference. maskgen before issue 15 used (1 + eps) and atanh, which
    assigns about 1% of N(0, 1) inputs to a different code.) The gradient is straight-through the
    rounding only: dz_q/dz = bound'(z) / floor(L/2) (the tanh bound keeps encoder outputs in range,
    as in the paper), not the identity of VQ/LFQ/RVQ.
    codes = mixed-radix index sum_i d_i prod_{j<i} L_j with digits d_i = round(bound(z_i)) + floor(L_i/2)
    (dim 0 is the least significant). aux: loss (0), perplexity and usage (when prod(levels) <= 2**20).
    """

    BOUNDS = ("paper", "maskgen_v1")

    def __init__(self, levels: Sequence[int], *, rngs: nnx.Rngs | None = None, bound: str = "paper"):
        """bound: "paper" (above), or "maskgen_v1", the (1 + eps)/atanh bound of maskgen before
        issue 15, kept only so that runs trained with it tokenize as they did."""
        del rngs  # no parameters; accepted for a uniform constructor
        if bound not in self.BOUNDS:
            raise ValueError(f"unknown FSQ bound {bound!r}; valid: {', '.join(self.BOUNDS)}")
        self.bound_kind = bound
        levels = tuple(int(level) for level in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {levels}")
        if math.prod(levels) >= 2 ** 31:
            raise ValueError(f"FSQ codebook prod{levels} = {math.prod(levels)} does not fit int32 codes")
        self.levels = levels
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        self.num_levels = 1

    def _consts(self):
        levels = np.asarray(self.levels, np.float64)
        offset = np.where(np.asarray(self.levels) % 2 == 0, 0.5, 0.0)
        if self.bound_kind == "paper":
            half_l = (levels - 1) * (1 - _FSQ_EPS) / 2
            shift = np.tan(offset / half_l)
        else:
            half_l = (levels - 1) * (1 + _FSQ_EPS) / 2
            shift = np.arctanh(offset / half_l)
        half_width = np.asarray(self.levels) // 2
        basis = np.cumprod((1,) + self.levels[:-1])
        f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
        return f32(half_l), f32(offset), f32(shift), f32(half_width), jnp.asarray(basis, jnp.int32)

    def bound(self, z: jax.Array) -> jax.Array:
        half_l, offset, shift, _, _ = self._consts()
        return jnp.tanh(z + shift) * half_l - offset

    def __call__(self, z, *, train: bool, rng: jax.Array | None = None):
        del train, rng  # stateless and deterministic
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ(levels={self.levels}) expects last axis {self.dim}, got {z.shape[-1]}")
        _, _, _, half_width, basis = self._consts()
        bounded = self.bound(z.astype(jnp.float32))
        rounded = _straight_through(jnp.round(bounded), bounded)
        z_q = rounded / half_width
        digits = (jax.lax.stop_gradient(rounded) + half_width).astype(jnp.int32)
        codes = jnp.sum(digits * basis, axis=-1)
        aux = {"loss": jnp.zeros((), jnp.float32)}
        if self.codebook_size <= _HIST_MAX_CODES:
            aux.update(_usage_stats(_code_counts(codes, self.codebook_size)))
        return z_q.astype(z.dtype), codes, aux

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        _, _, _, half_width, basis = self._consts()
        levels = jnp.asarray(self.levels, jnp.int32)
        digits = (codes[..., None] // basis) % levels
        return (digits.astype(jnp.float32) - half_width) / half_width


# ----------------------------------------------------------------------------- LFQ


class LFQ(Quantizer):
    """Lookup-Free Quantization (MAGVIT-v2, Yu et al., arXiv 2310.05737): each dim quantised to its sign.

    codebook_size = 2**dim; z_q = sign(z) in {-1, +1} (z > 0 -> +1, else -1) with a straight-through
    (identity) gradient; code = sum_i [z_i > 0] 2**i (dim 0 is the least significant bit).

    Loss = commitment_weight * mean((z - sg(z_q))^2) + entropy_weight * entropy, where
      entropy = H_sample - diversity_weight * H_batch over the 2**dim implicit codes c in {-1, 1}^dim,
      p(c | z) = softmax_c(-||z - c||^2 / temperature),
      H_sample = mean over vectors of H(p(. | z))   (low: confident assignments),
      H_batch  = H(mean over vectors of p(. | z))   (high: all codes used), natural log.
    `temperature` (0.01, MaskGIT/MAGVIT) sets how sharp p is: p(z_i > 0 bit) = sigmoid(4 z_i / T), so
    the entropy terms only move dims with |z_i| within a few T/4 of 0, and a collapse in which every
    |z_i| >> T is not undone by them. Since -||z - c||^2 = 2 z.c + const,
    p factorises over dims and H_sample is computed exactly per dim; H_batch needs the full
    [vectors, 2**dim] matrix (computed in chunks with rematerialisation), so dim is limited to
    `MAX_DIM` = 16 (65536 codes; the cost per step grows as vectors x 2**dim x dim). Entropy
    annealing (MAGVIT-v2) needs the step, so the tokenizer recipe adds it on top of `aux["loss"]`
    from `aux["entropy_loss"]` (= entropy_weight * entropy; see `entropy_anneal_factor` there).
    aux: loss, commitment, entropy, entropy_loss, entropy_per_sample, entropy_batch, perplexity, usage.
    """

    MAX_DIM = 16

    def __init__(self, dim: int, *, rngs: nnx.Rngs | None = None, entropy_weight: float = 0.1,
                 commitment_weight: float = 0.25, temperature: float = 0.01, diversity_weight: float = 1.0):
        del rngs  # no parameters; accepted for a uniform constructor
        if not 1 <= dim <= self.MAX_DIM:
            raise ValueError(
                f"LFQ dim must be in [1, {self.MAX_DIM}], got {dim}: the entropy loss and the usage "
                f"statistics enumerate all 2**dim codes (2**{dim} = {2 ** dim})"
            )
        if temperature <= 0:
            raise ValueError(f"LFQ temperature must be > 0, got {temperature}")
        self.dim = dim
        self.codebook_size = 2 ** dim
        self.num_levels = 1
        self.entropy_weight = float(entropy_weight)
        self.commitment_weight = float(commitment_weight)
        self.temperature = float(temperature)
        self.diversity_weight = float(diversity_weight)

    def _code_vectors(self) -> jax.Array:
        """All 2**dim codes as ±1 vectors [2**dim, dim], row i = decode_codes(i)."""
        return self.decode_codes(jnp.arange(self.codebook_size, dtype=jnp.int32))

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        bits = (codes[..., None] >> jnp.arange(self.dim, dtype=jnp.int32)) & 1
        return 2.0 * bits.astype(jnp.float32) - 1.0

    def entropy_terms(self, z_flat: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(H_sample, H_batch) for z_flat [N, dim] (see the class docstring)."""
        inv_t = 1.0 / self.temperature
        # Per dim, p(c_i = +1 | z_i) = sigmoid(4 z_i / T): (z - 1)^2 vs (z + 1)^2 differ by 4 z.
        a = 4.0 * z_flat * inv_t
        log_p, log_q = jax.nn.log_sigmoid(a), jax.nn.log_sigmoid(-a)
        h_sample = -jnp.sum(jnp.exp(log_p) * log_p + jnp.exp(log_q) * log_q, axis=-1).mean()

        codes = self._code_vectors()
        n, num_codes = z_flat.shape[0], self.codebook_size
        chunk = max(1, min(n, _CHUNK_ELEMENTS // num_codes))
        pad = (-n) % chunk
        zc = jnp.pad(z_flat, ((0, pad), (0, 0))).reshape(-1, chunk, self.dim)
        valid = (jnp.arange(n + pad) < n).reshape(-1, chunk).astype(jnp.float32)

        @jax.checkpoint
        def add_chunk(acc, xs):
            z_chunk, v = xs
            p = jax.nn.softmax(2.0 * inv_t * _dot_t(z_chunk, codes), axis=-1)
            return acc + jnp.sum(p * v[:, None], axis=0), None

        total, _ = jax.lax.scan(add_chunk, jnp.zeros((num_codes,), jnp.float32), (zc, valid))
        return h_sample, _entropy(total / n)

    def __call__(self, z, *, train: bool, rng: jax.Array | None = None):
        del train, rng  # stateless and deterministic
        if z.shape[-1] != self.dim:
            raise ValueError(f"LFQ(dim={self.dim}) got input with last axis {z.shape[-1]}")
        flat = z.astype(jnp.float32).reshape(-1, self.dim)
        positive = flat > 0
        q = jnp.where(positive, 1.0, -1.0)
        codes = jnp.sum(positive.astype(jnp.int32) << jnp.arange(self.dim, dtype=jnp.int32), axis=-1)
        commitment = jnp.mean(jnp.square(flat - q))
        h_sample, h_batch = self.entropy_terms(flat)
        entropy = h_sample - self.diversity_weight * h_batch
        aux = {
            "loss": self.commitment_weight * commitment + self.entropy_weight * entropy,
            "commitment": commitment,
            "entropy": entropy,
            "entropy_loss": self.entropy_weight * entropy,
            "entropy_per_sample": h_sample,
            "entropy_batch": h_batch,
            **_usage_stats(_code_counts(codes, self.codebook_size)),
        }
        z_q = _straight_through(q, flat).reshape(z.shape).astype(z.dtype)
        return z_q, codes.reshape(z.shape[:-1]), aux


# ----------------------------------------------------------------------------- factory

_KINDS = ("fsq", "lfq", "rvq", "vq", "kl")


def make_quantizer(kind: str, dim: int, *, rngs: nnx.Rngs, **kwargs) -> Quantizer:
    """Builds a quantizer by name: "vq" (needs codebook_size=), "fsq" (levels=, len(levels) == dim),
    "lfq", "rvq" (codebook_size=, num_levels=), or the continuous "kl" bottleneck
    (maskgen.tokenizers.gaussian.DiagonalGaussian, kl_weight=; it reads 2 * dim channels).
    Other keyword arguments go to the constructor."""
    if kind == "kl":
        from maskgen.tokenizers.gaussian import DiagonalGaussian

        return DiagonalGaussian(dim, rngs=rngs, **kwargs)
    if kind == "vq":
        return VectorQuantizer(dim, rngs=rngs, **kwargs)
    if kind == "rvq":
        return ResidualVQ(dim, rngs=rngs, **kwargs)
    if kind == "lfq":
        return LFQ(dim, rngs=rngs, **kwargs)
    if kind == "fsq":
        if "levels" not in kwargs:
            raise ValueError("make_quantizer('fsq', ...) needs levels=[...], e.g. [8, 5, 5, 5] for dim 4")
        levels = tuple(kwargs.pop("levels"))
        if len(levels) != dim:
            raise ValueError(f"FSQ levels {levels} give dim {len(levels)}, but dim={dim}")
        return FSQ(levels, rngs=rngs, **kwargs)
    raise ValueError(f"unknown quantizer kind {kind!r}; valid kinds: {', '.join(_KINDS)}")
