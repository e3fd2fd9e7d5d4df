"""Transformer over discrete tokens of any modality: the MaskGIT backbone, with a causal KV-cached
mode for an autoregressive baseline on the same weights layout.

One module, switched by configuration: token arrays of rank 1 (text [L]), 2 (image grids [h, w])
or 3 (video [t, h, w]); class-conditional (adaLN or a prefix token) or unconditional; one token
per position or K parallel codebook streams per position.

References:
  MaskGIT: Chang et al., "MaskGIT: Masked Generative Image Transformer", arXiv 2202.04200
    (bidirectional transformer over [MASK]-ed token grids, class token prepended, tied output head).
  adaLN-Zero: Peebles & Xie, "Scalable Diffusion Models with Transformers" (DiT), arXiv 2212.09748.
  RoPE: Su et al., "RoFormer", arXiv 2104.09864; the axial variant (the rotary pairs split evenly
    over the axes, each turning with its own coordinate) as used by e.g. FiT / FiTv2 (arXiv
    2402.12376, 2410.13925) for 2D grids.
  QK-norm: Dehghani et al., "Scaling Vision Transformers to 22 Billion Parameters", arXiv 2302.05442.
  Parallel codebook streams (summed input embeddings, one head per stream): MusicGen, Copet et al.,
    arXiv 2306.05284, and RQ-Transformer, Lee et al., arXiv 2203.01941.

Layout and conventions:
  * Inputs are token ids [B, N] in row-major order over `token_shape`, or [B, *token_shape]; with
    `num_streams` K > 1 a last axis K follows ([B, N, K] or [B, *token_shape, K]). Id `vocab_size`
    is [MASK] (in every stream). Logits have the input's shape plus [vocab_size].
  * Labels are in [0, num_classes]; `num_classes` is the learned null label for classifier-free
    guidance. conditioning="none" has no class table and takes no labels.
  * conditioning="adaln": every block's two pre-norm LayerNorms (no affine) are modulated by
    shift/scale, and the residual branches by a gate, all from Dense(SiLU(class embedding)) ->
    6*width, zero-initialised (adaLN-Zero: every block is the identity at init). The final norm gets
    its own zero-initialised shift/scale. So at init the labels do not affect the logits.
  * conditioning="prefix": the class embedding is one extra token in front of the sequence
    (bidirectional mode); its output is dropped before the head.
  * causal=True: sequence position i predicts token i. The input is a start element followed by
    tokens[:-1]. The start element is the class embedding in prefix mode and a learned `start_token`
    otherwise (adaLN: the class then enters through the modulation only; none: no class at all).
    The sequence length is N in causal mode, so no output is dropped.
  * Positions: sequence position i of a causal model carries the coordinates of the token it
    predicts (unravel i over token_shape), so the start element sits at the origin. With
    positions="rope" the bidirectional prefix token gets the identity rotation, which is the
    rotation of the origin. "rope2d" is the name older configs use for "rope" on 2D grids.
    positions="learned" adds a table [L, width] (L = sequence length, including a prefix token).
  * Parameters are float32; compute runs in `dtype`; attention softmax and logits are float32.
    With K = 1 the parameter tree is the one MaskGIT checkpoints were written with (no K axis).
  * architecture="pre_ln" (the default) is the block above: x + f(LN(x)), a final LayerNorm
    (eps 1e-6), exact GELU, Glorot-uniform kernels, and a bare tied head.
    architecture="bert" is the official MaskGIT transformer (google-research/maskgit,
    maskgit/nets/maskgit_transformer.py, a BERT without next-sentence prediction; Devlin et al.,
    arXiv 1810.04805): LayerNorm(token + position embedding) (`embed_norm`), post-LN blocks
    LN(x + f(x)), no final norm, and an MLM head LN(GELU(Dense(x))) (`mlm_dense`, `mlm_norm`)
    before the tied projection plus `head_bias`. Every LayerNorm has eps 1e-12, GELU is the tanh
    approximation, and every kernel and embedding is drawn from N(0, 0.02) truncated at 2 sigma
    (not rescaled, as the reference draws it). It takes the class as a prefix token (or none);
    adaLN modulates pre-norms, which a post-LN block does not have.
  * dropout (default 0): inverted dropout with this rate after the embedding, on the attention
    probabilities and on each block's two sublayer outputs (before the residual sum), where the
    reference applies it (0.1). Only when the call is given `dropout_rng` (training): evaluation
    and sampling pass none and are deterministic.
  * local_window (default None: full attention, exactly as before): a call with `local=True` (or a
    bool [B] choosing per example) restricts attention to positions whose first token_shape
    coordinate (time, for [T] codec frames) is within +-local_window of the query's: MAGNeT's
    restricted context for codebook levels above 0 (Ziv et al., arXiv 2401.04577, Sec. 3.1;
    audiocraft's `subcodes_context`, 5 frames). A prefix class token stays visible to every
    position but attends only to itself (else it would carry far frames into every position, as
    a conditioning by cross-attention never does). It adds no parameters, and `local=False` calls
    build no mask.
  * The official checkpoint's vocabulary holds codebook tokens, then the classes (offset by the
    codebook size), then [MASK] last; maskgen keeps [MASK] as row vocab_size of `token_embed` and
    the classes in `class_embed` (`maskgen.weights.maskgit_transformer` maps one onto the other).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskgen.models.layers import (MLP, Attention, Dense, ExpertChoiceMLP, LayerNorm, block_runner, check_remat,
                                   dropout, gelu_tanh, logical_param)
from maskgen.parallel import constrain

CONDITIONINGS = ("adaln", "prefix", "none")
POSITIONS = ("learned", "rope", "rope2d")
ARCHITECTURES = ("pre_ln", "bert")
ROPE_BASE = 10000.0
BERT_LAYERNORM_EPS = 1e-12  # the official MaskGIT transformer's (BERT's) LayerNorm epsilon
BERT_INIT_STDDEV = 0.02


def bert_truncated_normal(stddev: float = BERT_INIT_STDDEV):
    """The reference's initializer: a standard normal truncated to [-2, 2], times stddev (so the
    actual std is ~0.88 stddev; jax.nn.initializers.truncated_normal would rescale it)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * stddev

    return init


def rope_axial(coords, head_dim: int, base: float = ROPE_BASE):
    """Axial rotary tables for positions coords [T, R] (R axes): (cos, sin), each [T, head_dim/2].

    The head_dim/2 rotation pairs are split into R equal groups in axis order; group a turns with
    coordinate a at frequencies base^(-k / (head_dim / (2R))). The origin is the identity rotation.
    """
    coords = jnp.asarray(coords, jnp.float32)
    rank = coords.shape[-1]
    if head_dim % (2 * rank):
        raise ValueError(f"rope over {rank} axes needs a head dim divisible by {2 * rank} (2 x the number of "
                         f"axes), got {head_dim}")
    pairs = head_dim // (2 * rank)
    freqs = base ** (-jnp.arange(pairs, dtype=jnp.float32) / pairs)
    angles = jnp.concatenate([coords[..., a, None] * freqs for a in range(rank)], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def rope_2d(rows: jax.Array, cols: jax.Array, head_dim: int, base: float = ROPE_BASE):
    """Axial 2D rotary tables for positions (rows[t], cols[t]): (cos, sin), each [T, head_dim/2].

    The first head_dim/4 rotation pairs turn with the row index, the last head_dim/4 with the
    column index, each at frequencies base^(-k / (head_dim/4)). Position (0, 0) is the identity.
    """
    if head_dim % 4:
        raise ValueError(f"rope2d needs a head dim divisible by 4, got {head_dim}")
    return rope_axial(jnp.stack([jnp.asarray(rows), jnp.asarray(cols)], axis=-1), head_dim, base)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """DiT's x * (1 + scale) + shift; shift/scale [B, width] broadcast over the sequence."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TokenBlock(nnx.Module):
    """Pre-norm block; with adaLN, norms are modulated and residual branches gated by the class.

    post_ln=True is the BERT block: x = LN1(x + Attn(x)), then LN2(x + MLP(x)) (norm1/norm2 are
    then the post-norms; the parameter names stay). `dropout` acts on the attention probabilities
    and on both sublayer outputs before the residual sum, when the call gets a `dropout_rng`.

    Switches for diffusion transformers (maskgen.models.dit), off by default (the block and its
    parameters are then exactly as before): `head_dim` sets the per-head width (else width /
    num_heads), for MicroDiT's layer-wise scaling of the attention width (arXiv 2407.15811);
    `num_experts` > 0 replaces the MLP by an expert-choice mixture of experts with
    `capacity_factor` (`maskgen.models.layers.ExpertChoiceMLP`, Zhou et al. arXiv 2202.09368).
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, *, adaln: bool, qk_norm: bool,
                 rngs: nnx.Rngs, dtype=jnp.float32, post_ln: bool = False, dropout: float = 0.0,
                 head_dim: int | None = None, num_experts: int = 0, capacity_factor: float = 2.0):
        if post_ln and adaln:
            raise ValueError("a post-LN (bert) block has no pre-norms for adaLN to modulate")
        if num_experts and post_ln:
            raise ValueError("the mixture-of-experts MLP is for pre-LN blocks; the bert block keeps its dense MLP")
        # The default (pre-LN) block passes no new arguments, so its layers are built as before.
        bert = dict(eps=BERT_LAYERNORM_EPS) if post_ln else {}
        init = dict(kernel_init=bert_truncated_normal()) if post_ln else {}
        self.norm1 = LayerNorm(width, rngs=rngs, dtype=dtype, affine=not adaln, **bert)
        heads = dict(head_dim=head_dim) if head_dim is not None else {}
        self.attn = Attention(width, num_heads, rngs=rngs, dtype=dtype, qk_norm=qk_norm, **init, **heads)
        self.norm2 = LayerNorm(width, rngs=rngs, dtype=dtype, affine=not adaln, **bert)
        if num_experts:
            self.mlp = ExpertChoiceMLP(width, int(width * mlp_ratio), num_experts, capacity_factor, rngs=rngs,
                                       dtype=dtype)
        else:
            self.mlp = MLP(width, int(width * mlp_ratio), rngs=rngs, dtype=dtype, approximate_gelu=post_ln, **init)
        self.post_ln = post_ln
        self.dropout = float(dropout)
        # Rows: shift/scale/gate for attention, then for the MLP. Zero init: the block starts as identity.
        self.modulation = (
            Dense((width,), (6, width), ("cond", None, "embed"), rngs=rngs, dtype=dtype,
                  kernel_init=jax.nn.initializers.zeros)
            if adaln else None
        )

    def __call__(self, x: jax.Array, cond: jax.Array | None, *, mask=None, rope=None, cache=None, index=None,
                 dropout_rng: jax.Array | None = None):
        """x [B, T, width]; cond = SiLU(class embedding) [B, width] in adaLN mode, else None.

        With `cache` (and `index`), x is the single element at sequence position `index` and the
        attention runs through the KV cache. `dropout_rng` (training only) turns dropout on.
        Returns (x, updated cache or None).
        """
        rate = self.dropout if dropout_rng is not None else 0.0
        keys = jax.random.split(dropout_rng, 3) if rate > 0 else (None, None, None)
        if self.post_ln:
            if cache is None:
                a = self.attn(x, mask=mask, rope=rope, dropout_rate=rate, dropout_rng=keys[0])
            else:
                a, cache = self.attn.decode(x, cache, index, rope=rope)
            x = self.norm1(x + dropout(a, rate, keys[1]))
            return self.norm2(x + dropout(self.mlp(x), rate, keys[2])), cache
        if self.modulation is not None:
            shift1, scale1, gate1, shift2, scale2, gate2 = jnp.unstack(self.modulation(cond), axis=1)
            h = _modulate(self.norm1(x), shift1, scale1)
        else:
            h = self.norm1(x)
        if cache is None:
            a = self.attn(h, mask=mask, rope=rope, dropout_rate=rate, dropout_rng=keys[0])
        else:
            a, cache = self.attn.decode(h, cache, index, rope=rope)
        a = dropout(a, rate, keys[1])
        if self.modulation is not None:
            x = x + gate1[:, None] * a
            m = dropout(self.mlp(_modulate(self.norm2(x), shift2, scale2)), rate, keys[2])
            return x + gate2[:, None] * m, cache
        x = x + a
        return x + dropout(self.mlp(self.norm2(x)), rate, keys[2]), cache


class TokenTransformer(nnx.Module):
    """MaskGIT-style bidirectional (or, with causal=True, autoregressive) token transformer.

    __call__(tokens int [B, N(, K)] or [B, *token_shape(, K)], labels int [B] or None) -> float32
    logits of the input's shape + [vocab_size]. In causal mode, logits[:, i] predict tokens[:, i]
    from tokens[:, :i] and the label (teacher forcing); `init_cache` / `decode_step` give the same
    logits one position at a time.
    """

    def __init__(self, *, vocab_size: int, token_shape: tuple[int, ...], num_classes: int = 0, width: int,
                 depth: int, num_heads: int, mlp_ratio: float = 4.0, conditioning: str = "adaln",
                 positions: str = "learned", qk_norm: bool = False, tie_head: bool = True,
                 causal: bool = False, num_streams: int = 1, dtype=jnp.float32, remat: str = "none",
                 architecture: str = "pre_ln", dropout: float = 0.0, local_window: int | None = None,
                 rngs: nnx.Rngs):
        self.remat = check_remat(remat)
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; valid: {CONDITIONINGS}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; valid: {ARCHITECTURES}")
        if architecture == "bert" and conditioning == "adaln":
            raise ValueError("architecture='bert' (the official MaskGIT transformer) takes the class as a prefix "
                             "token: use conditioning='prefix' (or 'none'); adaLN modulates pre-norms, which its "
                             "post-LN blocks do not have")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if positions not in POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; valid: {POSITIONS}")
        token_shape = tuple(int(s) for s in token_shape)
        rank = len(token_shape)
        if not 1 <= rank <= 3 or min(token_shape) < 1:
            raise ValueError(f"token_shape must be 1 to 3 positive sizes ([L], [h, w] or [t, h, w]), got {token_shape}")
        if positions == "rope2d" and rank != 2:
            raise ValueError(f"positions='rope2d' is for 2D token grids, token_shape is {token_shape}; "
                             "use positions='rope' (axial over every axis)")
        if conditioning != "none" and num_classes < 1:
            raise ValueError(f"conditioning={conditioning!r} needs num_classes >= 1, got {num_classes}; "
                             "use conditioning='none' for unlabeled data")
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        if local_window is not None and (not isinstance(local_window, int) or local_window < 0):
            raise ValueError(f"local_window must be None (full attention) or an int >= 0 (frames either side), "
                             f"got {local_window!r}")
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        head_dim = width // num_heads
        if positions in ("rope", "rope2d") and head_dim % (2 * rank):
            raise ValueError(f"positions={positions!r} on a rank-{rank} token_shape needs head_dim = width / "
                             f"num_heads divisible by {2 * rank}, got {width} / {num_heads} = {head_dim}")
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.token_shape = token_shape
        self.num_tokens = math.prod(token_shape)
        self.num_streams = num_streams
        self.mask_token_id = vocab_size
        self.null_class = num_classes if conditioning != "none" else None
        self.width = width
        self.head_dim = head_dim
        self.conditioning = conditioning
        self.positions = positions
        self.causal = causal
        self.dtype = dtype
        self.architecture = architecture
        self.dropout = float(dropout)
        self.local_window = local_window
        bert = architecture == "bert"
        adaln = conditioning == "adaln"
        # A bidirectional prefix model has one extra (class) element; a causal one feeds its start
        # element in place of the last token, so its length stays N.
        self.has_prefix = conditioning == "prefix" and not causal
        self.seq_len = self.num_tokens + int(self.has_prefix)

        # Parameters are created in the order MaskGIT checkpoints were written with, so that a
        # default model draws the same initial values from the same seed as before.
        embed_init = bert_truncated_normal() if bert else jax.nn.initializers.normal(0.02)
        # Row vocab_size is [MASK]; row num_classes of the class table is the CFG null label.
        # Rows are not sharded: vocab_size + 1 rows rarely divide a mesh axis, and the table is small.
        # K streams get K tables in one array (K leads and is replicated: K is a handful).
        streams = () if num_streams == 1 else (num_streams,)
        stream_axes = () if num_streams == 1 else (None,)
        self.token_embed = logical_param(rngs, embed_init, streams + (vocab_size + 1, width),
                                         stream_axes + (None, "embed"))
        self.class_embed = (logical_param(rngs, embed_init, (num_classes + 1, width), ("classes", "embed"))
                            if conditioning != "none" else None)
        # Only a prefix model has a class embedding to start a causal sequence with.
        self.start_token = (logical_param(rngs, embed_init, (width,), ("embed",))
                            if causal and conditioning != "prefix" else None)
        self.pos_embed = (logical_param(rngs, embed_init, (self.seq_len, width), ("positions", "embed"))
                          if positions == "learned" else None)
        # BERT normalises the summed embeddings (eps 1e-12) before the first block.
        self.embed_norm = LayerNorm(width, rngs=rngs, dtype=dtype, eps=BERT_LAYERNORM_EPS) if bert else None
        self.blocks = nnx.List([
            TokenBlock(width, num_heads, mlp_ratio, adaln=adaln, qk_norm=qk_norm, rngs=rngs, dtype=dtype,
                       **(dict(post_ln=True) if bert else {}), dropout=dropout)
            for _ in range(depth)
        ])
        # Post-LN blocks end normalised: BERT has no final norm, but the MLM head's transform.
        self.final_norm = None if bert else LayerNorm(width, rngs=rngs, dtype=dtype, affine=not adaln)
        self.mlm_dense = (Dense((width,), (width,), ("embed", "mlp"), rngs=rngs, dtype=dtype,
                                kernel_init=bert_truncated_normal()) if bert else None)
        self.mlm_norm = LayerNorm(width, rngs=rngs, dtype=dtype, eps=BERT_LAYERNORM_EPS) if bert else None
        self.final_modulation = (
            Dense((width,), (2, width), ("cond", None, "embed"), rngs=rngs, dtype=dtype,
                  kernel_init=jax.nn.initializers.zeros)
            if adaln else None
        )
        if tie_head:
            self.head = None
            self.head_bias = logical_param(rngs, jax.nn.initializers.zeros, streams + (vocab_size,),
                                           stream_axes + ("vocab",))
        else:
            self.head = Dense((width,), streams + (vocab_size,), ("embed",) + stream_axes + ("vocab",), rngs=rngs,
                              dtype=dtype, **(dict(kernel_init=bert_truncated_normal()) if bert else {}))
            self.head_bias = None

    # ----------------------------------------------------------------------------------------- parts

    @property
    def _stream_shape(self) -> tuple[int, ...]:
        return () if self.num_streams == 1 else (self.num_streams,)

    def _flatten(self, tokens: jax.Array) -> jax.Array:
        """[B, N(, K)] or [B, *token_shape(, K)] -> [B, N(, K)], with a message naming both layouts."""
        k = self._stream_shape
        if tokens.shape[1:] == (self.num_tokens,) + k:
            return tokens
        if tokens.shape[1:] == self.token_shape + k:
            return tokens.reshape((tokens.shape[0], self.num_tokens) + k)
        raise ValueError(f"expected tokens [B, {self.num_tokens}{', ' + str(k[0]) if k else ''}] or "
                         f"[B, {', '.join(map(str, self.token_shape + k))}] (token_shape={self.token_shape}, "
                         f"num_streams={self.num_streams}), got shape {tokens.shape}")

    def _check_labels(self, labels, batch: int):
        if self.conditioning == "none":
            if labels is not None:
                raise ValueError("this model is unconditional (conditioning='none'); call it with labels=None")
            return None
        if labels is None:
            raise ValueError(f"this model is class-conditional (conditioning={self.conditioning!r}): pass labels "
                             f"[B] in [0, {self.num_classes}] ({self.num_classes} is the null class)")
        labels = jnp.asarray(labels)
        if labels.shape != (batch,):
            raise ValueError(f"labels must be [B] = ({batch},), got shape {labels.shape}")
        return labels

    def _embed_tokens(self, ids: jax.Array) -> jax.Array:
        """ids [B, T(, K)] -> [B, T, width]; the K streams' embeddings are summed per position."""
        table = self.token_embed[...]
        if self.num_streams == 1:
            return table[ids].astype(self.dtype)
        per_stream = table[jnp.arange(self.num_streams), ids]  # [B, T, K, width]
        return jnp.sum(per_stream.astype(self.dtype), axis=-2)

    def _class_embedding(self, labels: jax.Array) -> jax.Array:
        return self.class_embed[...][labels].astype(self.dtype)  # [B, width]

    def _cond(self, labels: jax.Array | None) -> jax.Array | None:
        """SiLU(class embedding) [B, width], the adaLN modulation input (None otherwise)."""
        if self.conditioning != "adaln":
            return None
        return jax.nn.silu(self._class_embedding(labels))

    def _start_element(self, labels: jax.Array | None, batch: int) -> jax.Array:
        """The causal start element [B, width]: class embedding (prefix) or the learned start token."""
        if self.conditioning == "prefix":
            return self._class_embedding(labels)
        return jnp.broadcast_to(self.start_token[...].astype(self.dtype), (batch, self.width))

    def _rope_tables(self):
        """(cos, sin) [seq_len, head_dim/2] for rotary positions, else None."""
        if self.positions not in ("rope", "rope2d"):
            return None
        coords = np.stack(np.unravel_index(np.arange(self.num_tokens), self.token_shape), axis=-1)  # [N, R]
        if self.has_prefix:  # the class token: the origin, i.e. the identity rotation
            coords = np.concatenate([np.zeros((1, len(self.token_shape)), coords.dtype), coords])
        return rope_axial(coords, self.head_dim)

    def _local_mask(self) -> np.ndarray:
        """bool [seq_len, seq_len]: True where |time(query) - time(key)| <= local_window, time being a
        token's first token_shape coordinate. A prefix class token is seen by every position but
        attends only to itself, so it carries the class and no far frame (like cross-attention)."""
        time = np.unravel_index(np.arange(self.num_tokens), self.token_shape)[0]
        near = np.abs(time[:, None] - time[None, :]) <= self.local_window
        if self.has_prefix:
            near = np.pad(near, ((1, 0), (1, 0)), constant_values=False)
            near[:, 0] = True
        return near

    def _attention_mask(self, local, batch: int) -> jax.Array | None:
        """The attention mask for a call: None (full bidirectional), causal, local, or both; `local`
        is a Python bool (one mask for the batch) or a bool array [B] (a mask per example)."""
        causal = jnp.tril(jnp.ones((self.seq_len, self.seq_len), bool)) if self.causal else None
        static = isinstance(local, (bool, np.bool_))
        if static and not local:
            return causal
        if self.local_window is None:
            raise ValueError("local attention was asked for, but this TokenTransformer has local_window=None; "
                             "build it with local_window=W (frames either side)")
        near = jnp.asarray(self._local_mask())
        if not static:  # traced: one flag for the batch (a scalar) or one per example [B]
            local = jnp.asarray(local, bool)
            if local.shape not in ((), (batch,)):
                raise ValueError(f"local must be a bool, a bool scalar or a bool array [B] = ({batch},), got shape "
                                 f"{local.shape}")
            # Where local is False every key is allowed: full attention for that example.
            near = near | ~(local if local.ndim == 0 else local[:, None, None, None])
        return near if causal is None else near & causal

    def _embedding_out(self, x: jax.Array, dropout_rng: jax.Array | None) -> jax.Array:
        """The summed embeddings [B, T, width] as the blocks see them: BERT's LayerNorm, then dropout."""
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return dropout(x, self.dropout, dropout_rng)

    def _logits(self, x: jax.Array, cond: jax.Array | None) -> jax.Array:
        """Final (modulated) norm, or BERT's MLM transform, and the head: [B, T, width] -> float32
        [B, T(, K), vocab_size]."""
        if self.mlm_dense is not None:
            x = self.mlm_norm(gelu_tanh(self.mlm_dense(x)))
        else:
            x = self.final_norm(x)
        if self.final_modulation is not None:
            shift, scale = jnp.unstack(self.final_modulation(cond), axis=1)
            x = _modulate(x, shift, scale)
        if self.head is None:  # tied: score against the (non-[MASK]) token embeddings of each stream
            table = self.token_embed[...][..., : self.vocab_size, :].astype(self.dtype)
            spec = "btd,vd->btv" if self.num_streams == 1 else "btd,kvd->btkv"
            logits = jnp.einsum(spec, x, table, preferred_element_type=jnp.float32)
            return logits + self.head_bias[...]
        return self.head(x).astype(jnp.float32)

    # ------------------------------------------------------------------------------------ forward

    def __call__(self, tokens: jax.Array, labels: jax.Array | None = None, *,
                 dropout_rng: jax.Array | None = None, local: bool | jax.Array = False) -> jax.Array:
        """tokens int in [0, vocab_size] ([B, N(, K)] or [B, *token_shape(, K)]); labels int [B] in
        [0, num_classes] (None for conditioning="none") -> float32 logits [*tokens.shape, vocab].

        dropout_rng: a PRNG key turns dropout on (training); None (the default) is deterministic.
        local: restrict attention to +-local_window frames (True, or a bool [B] per example); needs
        a model built with local_window. False (the default) is full attention."""
        if self.dropout == 0.0:
            dropout_rng = None
        in_shape = tokens.shape
        tokens = self._flatten(tokens)
        batch = tokens.shape[0]
        labels = self._check_labels(labels, batch)
        cond = self._cond(labels)
        if self.causal:
            start = self._start_element(labels, batch)[:, None]
            x = jnp.concatenate([start, self._embed_tokens(tokens[:, :-1])], axis=1)
        elif self.has_prefix:
            x = jnp.concatenate([self._class_embedding(labels)[:, None], self._embed_tokens(tokens)], axis=1)
        else:
            x = self._embed_tokens(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed[...].astype(self.dtype)
        # One key for the embedding dropout and one per block (each block splits its own three).
        keys = [None] * (len(self.blocks) + 1) if dropout_rng is None else jax.random.split(dropout_rng,
                                                                                            len(self.blocks) + 1)
        x = self._embedding_out(x, keys[0])
        mask = self._attention_mask(local, batch)
        rope = self._rope_tables()
        run = block_runner(lambda block, x, cond, mask, rope, key: block(x, cond, mask=mask, rope=rope,
                                                                         dropout_rng=key)[0], self.remat)
        for block, key in zip(self.blocks, keys[1:]):
            x = constrain(run(block, x, cond, mask, rope, key))
        if self.has_prefix:
            x = x[:, 1:]
        logits = self._logits(x, cond)
        return logits.reshape(in_shape + (self.vocab_size,))

    # ------------------------------------------------------------------------- cached decoding

    def init_cache(self, batch_size: int) -> list[dict[str, jax.Array]]:
        """Empty KV cache for causal decoding: per block {"k", "v"} zeros [B, heads, seq_len, head_dim]."""
        if not self.causal:
            raise ValueError("init_cache needs a causal TokenTransformer (causal=True)")
        shape = (batch_size, self.width // self.head_dim, self.seq_len, self.head_dim)
        return [{"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)} for _ in self.blocks]

    def decode_step(self, cache, token_in: jax.Array, index: jax.Array, labels: jax.Array | None = None):
        """Feeds sequence position `index` and returns (logits float32 [B(, K), vocab] for token `index`, cache).

        token_in int [B(, K)] is token index-1 (ignored at index 0, where the start element is fed).
        Pure: the cache is an argument and a result, so this runs on `nnx.merge(graphdef, params)`
        inside `jax.jit`, and in a `fori_loop`/`scan` with a traced `index`.
        """
        if not self.causal:
            raise ValueError("decode_step needs a causal TokenTransformer (causal=True)")
        index = jnp.asarray(index, jnp.int32)
        batch = token_in.shape[0]
        labels = self._check_labels(labels, batch)
        cond = self._cond(labels)
        # Clip so that the ignored token_in at index 0 is always a valid row.
        embedded = self._embed_tokens(jnp.clip(token_in, 0, self.vocab_size)[:, None])[:, 0]
        x = jnp.where(index == 0, self._start_element(labels, batch), embedded)[:, None]  # [B, 1, width]
        if self.pos_embed is not None:
            x = x + jax.lax.dynamic_index_in_dim(self.pos_embed[...], index, keepdims=True).astype(self.dtype)
        x = self._embedding_out(x, None)
        rope = self._rope_tables()
        if rope is not None:
            rope = tuple(jax.lax.dynamic_index_in_dim(t, index, keepdims=True) for t in rope)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, cond, rope=rope, cache=layer_cache, index=index)
            new_cache.append(layer_cache)
        return self._logits(x, cond)[:, 0], new_cache
