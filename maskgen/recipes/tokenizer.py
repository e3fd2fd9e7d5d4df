"""Discrete image tokenizer recipe: conv encoder -> quantizer (VQ | FSQ | LFQ | residual VQ) -> conv
decoder, trained with a reconstruction loss, optional perceptual and adversarial losses.

References: VQ-VAE (van den Oord et al., arXiv 1711.00937), VQGAN (Esser et al., arXiv 2012.09841)
and the MaskGIT tokenizer (Chang et al., arXiv 2202.04200), FSQ (Mentzer et al., arXiv 2309.15505),
LFQ (MAGVIT-v2, Yu et al., arXiv 2310.05737), residual VQ (SoundStream, arXiv 2107.03312), LeCam
regularisation (Tseng et al., arXiv 2104.03310), R1 (Mescheder et al., arXiv 1801.04406).

The GAN runs inside the one loop with one loss: the generator's adversarial term sees the
discriminator through `stop_gradient`, and the discriminator's term sees reconstructions through
`stop_gradient`, so one gradient of the sum updates each network with its own objective; the
discriminator is its own optimizer group (`optimizer_groups`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskgen.config import boolean, int_tuple, integer, number, one_of, recipe_problems, string
from maskgen.models.conv import Decoder, Discriminator, Encoder
from maskgen.recipes.base import Recipe, register
from maskgen.tokenizers import make_quantizer
from maskgen.tokenizers.quantizers import LFQ

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
QUANTIZERS = ("vq", "fsq", "lfq", "rvq")

# What each tokenizer setting may be (maskgen.config.check_spec); the quantizer's own keys are
# checked only for the quantizer chosen (QUANTIZER_SPECS).
CONFIG_SPEC = {
    "model.base_channels": integer(min=1),
    "model.channel_multipliers": int_tuple(1, why="one per resolution level; each level after the first halves the size"),
    "model.num_res_blocks": integer(min=1, why="each level downsamples after its blocks"),
    "model.quantizer": one_of(*QUANTIZERS),
    "model.discriminator_channels": integer(min=1),
    "model.discriminator_downsamples": integer(min=0),
    "loss.reconstruction": one_of("l1", "l2"),
    "loss.reconstruction_weight": number(0),
    "loss.perceptual_weight": number(0),
    "loss.perceptual_network": string(),
    "loss.adversarial_weight": number(0, why="0 turns the GAN off"),
    "loss.gan_loss": one_of("hinge", "non_saturating"),
    "loss.gan_start_step": integer(min=0),
    "loss.lecam_weight": number(0),
    "loss.lecam_decay": number(0, 1, max_open=True),
    "loss.r1_weight": number(0),
    "loss.discriminator_lr": number(0, min_open=True),
    "loss.discriminator_b1": number(0, 1, max_open=True),
}
_VQ_SPEC = {
    "model.embed_dim": integer(min=1),
    "model.codebook_size": integer(min=2),
    "model.vq.l2_normalize": boolean(),
    "model.vq.commitment_weight": number(0),
    "model.vq.codebook_weight": number(0),
    "model.vq.use_ema": boolean(),
    "model.vq.ema_decay": number(0, 1, max_open=True),
    "model.vq.kmeans_init": boolean(),
    "model.vq.kmeans_iters": integer(min=0),
    "model.vq.restart_dead_codes": boolean(),
    "model.vq.dead_code_threshold": number(0),
}
QUANTIZER_SPECS = {
    "vq": _VQ_SPEC,
    "rvq": {**_VQ_SPEC, "model.rvq_levels": integer(min=1), "model.quantizer_dropout": number(0, 1)},
    # FSQ rounds dimension i to levels[i] values: fewer than 2 would be a constant (FSQ.__init__).
    "fsq": {"model.fsq_levels": int_tuple(2, why="levels per dimension; the codebook is their product")},
    # The entropy terms enumerate all 2**bits codes (LFQ.MAX_DIM).
    "lfq": {"model.lfq_bits": integer(1, LFQ.MAX_DIM), "model.lfq.entropy_weight": number(0),
            "model.lfq.commitment_weight": number(0), "model.lfq.temperature": number(0, min_open=True),
            "model.lfq.diversity_weight": number(0)},
}


class Tokenizer(nnx.Module):
    """Encoder, quantizer, decoder and (optionally) the discriminator that trains them."""

    def __init__(self, *, channels: int, base_channels: int, channel_multipliers, num_res_blocks: int,
                 quantizer: str, quantizer_kwargs: dict, embed_dim: int, discriminator: dict | None,
                 spatial_dims: int = 2, rngs: nnx.Rngs, dtype=jnp.float32):
        conv = dict(base_channels=base_channels, channel_multipliers=tuple(channel_multipliers),
                    num_res_blocks=num_res_blocks, embed_dim=embed_dim, spatial_dims=spatial_dims, rngs=rngs, dtype=dtype)
        self.encoder = Encoder(in_channels=channels, **conv)
        self.quantizer = make_quantizer(quantizer, embed_dim, rngs=rngs, **quantizer_kwargs)
        self.decoder = Decoder(out_channels=channels, **conv)
        self.discriminator = (
            Discriminator(in_channels=channels, spatial_dims=spatial_dims, rngs=rngs, dtype=dtype, **discriminator)
            if discriminator else None
        )

    def encode(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None):
        """x [B, H, W, C] -> (z_q, codes, aux)."""
        return self.quantizer(self.encoder(x).astype(jnp.float32), train=train, rng=rng)

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        return self.decoder(self.quantizer.decode_codes(codes))


def _frozen(module: nnx.Module) -> nnx.Module:
    """A copy of `module` whose variables carry no gradient (and whose updates go nowhere)."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


@register("tokenizer")
class TokenizerRecipe(Recipe):
    capabilities = frozenset({"encode", "decode", "reconstruct"})

    def __init__(self, *, image_size: int, channels: int, model_kwargs: dict, reconstruction: str,
                 reconstruction_weight: float, perceptual_weight: float, perceptual_network: str,
                 adversarial_weight: float, gan_loss: str, gan_start_step: int, lecam_weight: float,
                 lecam_decay: float, r1_weight: float, discriminator_overrides: dict,
                 perceptual_fn: Callable[[jax.Array], jax.Array] | None = None):
        self.image_size, self.channels = image_size, channels
        self.model_kwargs = model_kwargs
        self.reconstruction, self.reconstruction_weight = reconstruction, reconstruction_weight
        self.perceptual_weight, self.perceptual_network = perceptual_weight, perceptual_network
        self.perceptual_fn = perceptual_fn
        self.adversarial_weight, self.gan_loss, self.gan_start_step = adversarial_weight, gan_loss, gan_start_step
        self.lecam_weight, self.lecam_decay, self.r1_weight = lecam_weight, lecam_decay, r1_weight
        self.discriminator_overrides = discriminator_overrides
        levels = len(model_kwargs["channel_multipliers"]) - 1
        self.token_grid = (image_size // 2 ** levels, image_size // 2 ** levels)
        q = model_kwargs["quantizer_kwargs"]
        kind = model_kwargs["quantizer"]
        self.codebook_size = {"fsq": lambda: math.prod(q["levels"]),
                              "lfq": lambda: 2 ** model_kwargs["embed_dim"]}.get(kind, lambda: q["codebook_size"])()
        self.num_levels = q.get("num_levels", 1) if kind == "rvq" else 1

    # ---------------------------------------------------------------- config
    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> "TokenizerRecipe":
        m, loss = config.model, config.loss
        kind = m.quantizer
        if kind == "vq":
            qkw = dict(codebook_size=m.codebook_size, **m.vq.to_dict())
            embed_dim = m.embed_dim
        elif kind == "rvq":
            qkw = dict(codebook_size=m.codebook_size, num_levels=m.rvq_levels,
                       quantizer_dropout=m.quantizer_dropout, **m.vq.to_dict())
            embed_dim = m.embed_dim
        elif kind == "fsq":
            qkw = dict(levels=tuple(m.fsq_levels))
            embed_dim = len(m.fsq_levels)
        else:  # lfq
            qkw = dict(**m.lfq.to_dict())
            embed_dim = m.lfq_bits
        use_gan = loss.adversarial_weight > 0
        model_kwargs = dict(
            base_channels=m.base_channels, channel_multipliers=tuple(m.channel_multipliers),
            num_res_blocks=m.num_res_blocks, quantizer=kind, quantizer_kwargs=qkw, embed_dim=embed_dim,
            discriminator=dict(base_channels=m.discriminator_channels, num_downsamples=m.discriminator_downsamples)
            if use_gan else None,
            dtype=_DTYPES[config.compute_dtype],
        )
        perceptual_fn = None
        if loss.perceptual_weight > 0:
            perceptual_fn = perceptual_network(loss.perceptual_network)
        return cls(
            image_size=config.data.image_size, channels=int(data_info["image_shape"][-1]), model_kwargs=model_kwargs,
            reconstruction=loss.reconstruction, reconstruction_weight=loss.reconstruction_weight,
            perceptual_weight=loss.perceptual_weight, perceptual_network=loss.perceptual_network,
            adversarial_weight=loss.adversarial_weight, gan_loss=loss.gan_loss, gan_start_step=loss.gan_start_step,
            lecam_weight=loss.lecam_weight, lecam_decay=loss.lecam_decay, r1_weight=loss.r1_weight,
            discriminator_overrides=dict(lr=loss.discriminator_lr, b1=loss.discriminator_b1),
            perceptual_fn=perceptual_fn,
        )

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        m, loss = config.model, config.loss
        spec = {**CONFIG_SPEC, **QUANTIZER_SPECS.get(m.quantizer, {})}
        problems = recipe_problems(config, data_info, spec, needs="images")
        if problems.ok("model.channel_multipliers", "data.image_size"):
            factor = 2 ** (len(m.channel_multipliers) - 1)
            if config.data.image_size % factor:
                problems.append(f"config.data.image_size={config.data.image_size} is not divisible by the "
                                f"downsampling factor {factor} (from model.channel_multipliers)")
        if (problems.ok("loss.perceptual_weight", "loss.perceptual_network") and loss.perceptual_weight > 0
                and not (loss.perceptual_network == "digit_classifier" or loss.perceptual_network.startswith("mae:"))):
            problems.append(f"config.loss.perceptual_network must be one of {PERCEPTUAL_NETWORKS}, got "
                            f"{loss.perceptual_network!r}")
        if m.quantizer == "fsq" and problems.ok("model.fsq_levels") and math.prod(m.fsq_levels) >= 2 ** 31:
            problems.append(f"config.model.fsq_levels={tuple(m.fsq_levels)}: the codebook prod = "
                            f"{math.prod(m.fsq_levels)} must be < 2**31 (int32 codes)")
        return problems

    def info(self) -> dict[str, Any]:
        shape = self.token_grid + ((self.num_levels,) if self.model_kwargs["quantizer"] == "rvq" else ())
        return {"codebook_size": self.codebook_size, "token_shape": shape, "num_levels": self.num_levels,
                "quantizer": self.model_kwargs["quantizer"]}

    def optimizer_groups(self):
        if self.model_kwargs["discriminator"] is None:
            return None, {}

        def labels(params):
            return {k: jax.tree.map(lambda _: "discriminator" if k == "discriminator" else "default", v)
                    for k, v in params.items()}

        return labels, {"discriminator": self.discriminator_overrides}

    def make_model(self, rngs: nnx.Rngs) -> Tokenizer:
        return Tokenizer(channels=self.channels, rngs=rngs, **self.model_kwargs)

    # ---------------------------------------------------------------- training
    def _reconstruction_loss(self, x, x_rec):
        diff = x_rec - x
        return jnp.abs(diff).mean() if self.reconstruction == "l1" else jnp.square(diff).mean()

    def loss(self, model: Tokenizer, batch, rng, step):
        x = batch["image"]
        quant_rng, _ = jax.random.split(rng)
        z_q, codes, qaux = model.encode(x, train=True, rng=quant_rng)
        x_rec = model.decoder(z_q)
        rec = self._reconstruction_loss(x, x_rec)
        total = self.reconstruction_weight * rec + qaux["loss"]
        metrics = {"reconstruction": rec, "quantizer_loss": qaux["loss"],
                   **{f"quantizer/{k}": v for k, v in qaux.items() if k != "loss"}}
        if self.perceptual_fn is not None:
            perceptual = perceptual_distance(self.perceptual_fn, x, x_rec)
            total = total + self.perceptual_weight * perceptual
            metrics["perceptual"] = perceptual
        if model.discriminator is not None:
            gan_total, gan_metrics = self._gan_losses(model.discriminator, x, x_rec, step)
            total = total + gan_total
            metrics.update(gan_metrics)
        return total, metrics

    def _gan_losses(self, disc: Discriminator, x, x_rec, step):
        on = (step >= self.gan_start_step).astype(jnp.float32)
        # Generator term: the discriminator is frozen.
        fake_for_g = _frozen(disc)(x_rec)
        if self.gan_loss == "hinge":
            g_loss = -fake_for_g.mean()
        else:
            g_loss = jax.nn.softplus(-fake_for_g).mean()
        # Discriminator term: reconstructions are constants.
        real = disc(x)
        fake = disc(jax.lax.stop_gradient(x_rec))
        if self.gan_loss == "hinge":
            d_loss = jax.nn.relu(1.0 - real).mean() + jax.nn.relu(1.0 + fake).mean()
        else:
            d_loss = jax.nn.softplus(-real).mean() + jax.nn.softplus(fake).mean()
        # LeCam: keep logits near the EMA of the other side's logits.
        lecam = (jnp.square(jax.nn.relu(real - disc.ema_fake[...])).mean()
                 + jnp.square(jax.nn.relu(disc.ema_real[...] - fake)).mean())
        decay = self.lecam_decay
        disc.ema_real[...] = decay * disc.ema_real[...] + (1 - decay) * jax.lax.stop_gradient(real.mean())
        disc.ema_fake[...] = decay * disc.ema_fake[...] + (1 - decay) * jax.lax.stop_gradient(fake.mean())
        total = on * (self.adversarial_weight * g_loss + d_loss + self.lecam_weight * lecam)
        metrics = {"gan/generator": g_loss, "gan/discriminator": d_loss, "gan/lecam": lecam,
                   "gan/logits_real": real.mean(), "gan/logits_fake": fake.mean(), "gan/active": on}
        if self.r1_weight > 0:
            graphdef, state = nnx.split(disc)
            grad_x = jax.grad(lambda xx: nnx.merge(graphdef, state)(xx).sum())(x)
            r1 = jnp.square(grad_x).reshape(x.shape[0], -1).sum(-1).mean()
            total = total + on * 0.5 * self.r1_weight * r1
            metrics["gan/r1"] = r1
        return total, metrics

    # ---------------------------------------------------------------- inference
    def reconstruct(self, model: Tokenizer, batch, rng):
        _, codes, _ = model.encode(batch["image"], train=False)
        return {"reconstruction": model.decode_codes(codes), "codes": codes}

    def sample(self, model: Tokenizer, batch, rng):
        out = self.reconstruct(model, batch, rng)
        return {"original": batch["image"], "reconstruction": out["reconstruction"]}

    def encode(self, model: Tokenizer, batch, rng):
        return model.encode(batch["image"], train=False)[1]

    def decode(self, model: Tokenizer, batch, rng):
        return model.decode_codes(batch["codes"])


# -------------------------------------------------------------------- perceptual loss
PERCEPTUAL_NETWORKS = ("digit_classifier", "mae:<workdir>")


def perceptual_network(name: str) -> Callable[[jax.Array], jax.Array]:
    """A frozen feature network trained inside maskgen (no pretrained weights are downloaded).

    "digit_classifier": the digits CNN of `maskgen.perception.digit_classifier` (trained and
      cached on first use); its penultimate features serve as the perceptual space on digits.
    "mae:<workdir>": the encoder of a trained MAE run (EMA weights), on all patches; its output
      tokens are the features (the images must match that run's size and channels).
    """
    if name == "digit_classifier":
        from maskgen.perception.digit_classifier import get_digit_classifier

        return get_digit_classifier(None).features
    if name.startswith("mae:"):
        from maskgen.recipes.mae import load_encoder_features

        return load_encoder_features(name[len("mae:"):])
    raise ValueError(f"unknown perceptual network {name!r}; valid: {PERCEPTUAL_NETWORKS}")


def perceptual_distance(features_fn: Callable, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared distance of unit-normalised features (the LPIPS recipe without learned weights)."""
    fx, fy = features_fn(x), features_fn(y)
    fx = fx / (jnp.linalg.norm(fx, axis=-1, keepdims=True) + 1e-8)
    fy = fy / (jnp.linalg.norm(fy, axis=-1, keepdims=True) + 1e-8)
    return jnp.square(fx - fy).sum(-1).mean()
