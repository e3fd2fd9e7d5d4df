"""Image tokenizer recipe: conv encoder -> quantizer (VQ | FSQ | LFQ | residual VQ) or the continuous KL
bottleneck -> conv decoder, trained with a reconstruction loss, optional perceptual and adversarial losses.

References: VQ-VAE (van den Oord et al., arXiv 1711.00937), VQGAN (Esser et al., arXiv 2012.09841)
and the MaskGIT tokenizer (Chang et al., arXiv 2202.04200), FSQ (Mentzer et al., arXiv 2309.15505),
LFQ (MAGVIT-v2, Yu et al., arXiv 2310.05737), residual VQ (SoundStream, arXiv 2107.03312), LeCam
regularisation (Tseng et al., arXiv 2104.03310), R1 (Mescheder et al., arXiv 1801.04406), the
StyleGAN discriminator (Karras et al., arXiv 1912.04958, as in MaskGIT/MAGVIT), and the KL (diagonal
Gaussian) bottleneck of LDM (Rombach et al., arXiv 2112.10752), whose KL-VAEs MAR (arXiv 2406.11838)
and MicroDiT (arXiv 2407.15811) generate in.

Continuous latents (`model.quantizer="kl"`, issue 16): the encoder outputs a mean and a log-variance
per latent channel (`model.embed_dim` channels, so the encoder's last conv has 2 x embed_dim), training
decodes a sample mean + std * noise and adds `loss.kl_weight` x KL(q || N(0, 1)) (summed over latent
elements, averaged over the batch; maskgen.tokenizers.gaussian), and `encode` returns the means, float32
[B, h, w, embed_dim]; `decode` takes such latents. Everything else (reconstruction, perceptual, GAN
terms, EMA, evaluators) is the same as for the quantizers.

Paper-fidelity switches (issue 15; docs/fidelity.md): the VQ entropy loss (`model.vq.entropy_*`),
R1 at full strength (w * mean_batch ||grad_x D(x)||^2, the MaskGIT/MAGVIT `r1_gradient_penalty`),
`model.discriminator` = "patch" | "stylegan", the VQGAN adaptive GAN weight (Esser et al.,
arXiv 2012.09841, Eq. 7; `loss.adaptive_gan_weight`), MAGVIT's entropy-loss annealing
(`loss.entropy_anneal_factor` / `_steps`), a GroupNorm before LFQ (`model.lfq_group_norm`), the
official MaskGIT VQGAN block (`model.conv_variant`) and pixel range (`model.pixel_range`) for its
weights, and the FSQ bound (`model.fsq_bound`).

The GAN runs inside the one loop with one loss: the generator's adversarial term sees the
discriminator through `stop_gradient`, and the discriminator's term sees reconstructions through
`stop_gradient`, so one gradient of the sum updates each network with its own objective; the
discriminator is its own optimizer group (`optimizer_groups`).

Log-mel input (`model.input="log_mel"`, issue 17): the tokenizer of SpecMaskGIT (Comunità et al.,
arXiv 2406.17672), itself the SpecVQGAN idea (Iashin & Rahtu, arXiv 2110.08791): the same 2-D conv
VQ tokenizer on a mel spectrogram seen as a one-channel image. The recipe reads audio batches
(`batch["audio"]` float32 [B, T, 1]) and computes, inside its jitted loss/encode, the log-mel of
`config.mel` (maskgen.audio.features.MelConfig; the sample rate is the data's), keeps its first
`model.mel_frames` frames (0: all, T // hop), scales it to about [-1, 1]
(`features.scale_log_mel`) and lays it out as [B, n_mels, frames, 1] (rows = mel bins from low to
high, columns = frames). Tokens are then an (n_mels / f) x (frames / f) grid for a downsampling
factor f = 2 ** (len(channel_multipliers) - 1); `decode` returns the scaled log-mel grid, and
`info()["decodes_to"] = "log_mel"` tells `maskgen.runs.AudioDecoder` to unscale it and invert it
with Griffin-Lim (`model.griffin_lim_iters`) for listening.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskgen.audio import features as audio_features
from maskgen.config import Rule, boolean, int_tuple, integer, number, one_of, or_none, recipe_problems, string
from maskgen.models.conv import VARIANTS, Decoder, Discriminator, Encoder, GroupNorm, StyleGANDiscriminator
from maskgen.recipes.base import Recipe, register
from maskgen.tokenizers import make_quantizer
from maskgen.tokenizers.quantizers import FSQ, LFQ

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
QUANTIZERS = ("vq", "fsq", "lfq", "rvq", "kl")
CONTINUOUS = ("kl",)  # bottlenecks whose codes are float latents, not ids
DISCRIMINATORS = ("patch", "stylegan")
PIXEL_RANGES = ("minus_one_to_one", "zero_to_one")
INPUTS = ("image", "log_mel")  # what the conv autoencoder sees: images, or a log-mel spectrogram of audio
# Eq. 7 of VQGAN (arXiv 2012.09841, taming-transformers): lambda = ||g_rec|| / (||g_gan|| + 1e-4), clipped.
_ADAPTIVE_EPS, _ADAPTIVE_MAX = 1e-4, 1e4

# What each tokenizer setting may be (maskgen.config.check_spec); the quantizer's own keys are
# checked only for the quantizer chosen (QUANTIZER_SPECS).
CONFIG_SPEC = {
    "model.base_channels": integer(min=1),
    "model.channel_multipliers": int_tuple(1, why="one per resolution level; each level after the first halves the size"),
    "model.num_res_blocks": integer(min=1, why="each level downsamples after its blocks"),
    "model.quantizer": one_of(*QUANTIZERS),
    "model.discriminator_channels": integer(min=1),
    "model.discriminator_downsamples": integer(min=0),
    # Optional keys (absent from configs saved before issue 15: their defaults keep those runs exact).
    "model.discriminator": one_of(*DISCRIMINATORS, optional=True),
    "model.stylegan_channel_multiplier": integer(min=1, optional=True),
    "model.stylegan_max_channels": integer(min=1, why="the width up to 32 px (512 in MaskGIT)", optional=True),
    "model.stylegan_blur_resample": boolean(optional=True),
    "model.conv_variant": one_of(*VARIANTS, optional=True),
    "model.pixel_range": one_of(*PIXEL_RANGES, optional=True),
    # Optional keys of issue 17 (audio): absent from image configs, whose defaults are "image".
    "model.input": one_of(*INPUTS, optional=True),
    "model.mel_frames": integer(min=0, why="log-mel frames kept from the clip's start; 0: all (T // hop)",
                                optional=True),
    "model.griffin_lim_iters": integer(min=1, why="Griffin-Lim iterations when decoded mels are turned into audio",
                                       optional=True),
    "loss.adaptive_gan_weight": boolean(optional=True),
    "loss.entropy_anneal_factor": number(0, why="extra multiple of the entropy loss at step 0", optional=True),
    "loss.entropy_anneal_steps": integer(min=0, optional=True),
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
    "model.vq.entropy_weight": number(0, optional=True),
    "model.vq.entropy_temperature": number(0, min_open=True, optional=True),
}
# config.mel: the log-mel front end of `model.input="log_mel"` (maskgen.audio.features.MelConfig fields).
MEL_SPEC = {
    "mel.n_fft": integer(min=2),
    "mel.hop": integer(min=1),
    "mel.n_mels": integer(min=1),
    "mel.sample_rate": integer(min=1, why="must equal the data's sample rate", optional=True),
    "mel.win_length": or_none(integer(min=1, optional=True)),
    "mel.f_min": number(0, optional=True),
    "mel.f_max": or_none(number(0, min_open=True, optional=True)),
    "mel.mel_scale": one_of("slaney", "htk", optional=True),
    "mel.norm": Rule("'slaney' or None", lambda v: v in ("slaney", None), optional=True),
    "mel.power": number(0, min_open=True, why="1: magnitude, 2: power", optional=True),
    "mel.log_floor": number(0, min_open=True, optional=True),
}
QUANTIZER_SPECS = {
    "vq": _VQ_SPEC,
    "rvq": {**_VQ_SPEC, "model.rvq_levels": integer(min=1), "model.quantizer_dropout": number(0, 1)},
    # FSQ rounds dimension i to levels[i] values: fewer than 2 would be a constant (FSQ.__init__).
    "fsq": {"model.fsq_levels": int_tuple(2, why="levels per dimension; the codebook is their product"),
            "model.fsq_bound": one_of(*FSQ.BOUNDS, optional=True)},
    # The entropy terms enumerate all 2**bits codes (LFQ.MAX_DIM).
    "lfq": {"model.lfq_bits": integer(1, LFQ.MAX_DIM), "model.lfq.entropy_weight": number(0),
            "model.lfq.commitment_weight": number(0), "model.lfq.temperature": number(0, min_open=True),
            "model.lfq.diversity_weight": number(0), "model.lfq_group_norm": boolean(optional=True)},
    # LDM's KL weight is 1e-6 (its autoencoder configs' `kl_weight`).
    "kl": {"model.embed_dim": integer(min=1, why="latent channels (the encoder outputs twice as many)"),
           "loss.kl_weight": number(0, why="weight of KL(q || N(0, 1)); LDM uses 1e-6")},
}


class Tokenizer(nnx.Module):
    """Encoder, quantizer, decoder and (optionally) the discriminator that trains them."""

    def __init__(self, *, channels: int, base_channels: int, channel_multipliers, num_res_blocks: int,
                 quantizer: str, quantizer_kwargs: dict, embed_dim: int, discriminator: dict | None,
                 spatial_dims: int = 2, rngs: nnx.Rngs, dtype=jnp.float32, conv_variant: str = "maskgen",
                 pixel_range: str = "minus_one_to_one", pre_quantizer_norm: bool = False):
        """discriminator: None, or {"kind": "patch" | "stylegan", **that class's keyword arguments}.
        pixel_range "zero_to_one": the encoder reads (x + 1)/2 and the decoder's output y becomes
        2y - 1 (the official MaskGIT VQGAN's networks work in [0, 1]; maskgen's data are in [-1, 1]).
        pre_quantizer_norm: a GroupNorm (no activation) on the encoder output before the quantizer."""
        if pixel_range not in PIXEL_RANGES:
            raise ValueError(f"unknown pixel_range {pixel_range!r}; valid: {PIXEL_RANGES}")
        conv = dict(base_channels=base_channels, channel_multipliers=tuple(channel_multipliers),
                    num_res_blocks=num_res_blocks, embed_dim=embed_dim, spatial_dims=spatial_dims, rngs=rngs,
                    dtype=dtype, variant=conv_variant)
        self.unit_pixels = pixel_range == "zero_to_one"
        # The KL bottleneck reads a mean and a log-variance per latent channel. The encoder is built
        # before the quantizer (as before issue 16), so the other quantizers' initial values are unchanged.
        encoder_dim = 2 * embed_dim if quantizer in CONTINUOUS else embed_dim
        self.encoder = Encoder(in_channels=channels, **{**conv, "embed_dim": encoder_dim})
        self.pre_quantizer_norm = GroupNorm(encoder_dim, rngs=rngs) if pre_quantizer_norm else None
        self.quantizer = make_quantizer(quantizer, embed_dim, rngs=rngs, **quantizer_kwargs)
        assert getattr(self.quantizer, "input_dim", embed_dim) == encoder_dim
        self.decoder = Decoder(out_channels=channels, **conv)
        disc = None
        if discriminator:
            kwargs = dict(discriminator)
            cls = {"patch": Discriminator, "stylegan": StyleGANDiscriminator}[kwargs.pop("kind", "patch")]
            disc = cls(in_channels=channels, spatial_dims=spatial_dims, rngs=rngs, dtype=dtype, **kwargs)
        self.discriminator = disc

    def latents(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, C] in [-1, 1] -> the continuous latents the quantizer reads (float32)."""
        z = self.encoder((x + 1.0) * 0.5 if self.unit_pixels else x).astype(jnp.float32)
        return z if self.pre_quantizer_norm is None else self.pre_quantizer_norm(z)

    def encode(self, x: jax.Array, *, train: bool = False, rng: jax.Array | None = None):
        """x [B, H, W, C] -> (z_q, codes, aux)."""
        return self.quantizer(self.latents(x), train=train, rng=rng)

    def output_pixels(self, y: jax.Array) -> jax.Array:
        """The decoder's raw output -> images in [-1, 1] space."""
        return y * 2.0 - 1.0 if self.unit_pixels else y

    def decode(self, z_q: jax.Array) -> jax.Array:
        return self.output_pixels(self.decoder(z_q))

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        return self.decode(self.quantizer.decode_codes(codes))


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
                 perceptual_fn: Callable[[jax.Array], jax.Array] | None = None, adaptive_gan_weight: bool = False,
                 entropy_anneal_factor: float = 0.0, entropy_anneal_steps: int = 0, mel: dict | None = None,
                 mel_frames: int = 0, num_samples: int = 0, griffin_lim_iters: int = 32):
        """mel: None for image input; for log-mel input the MelConfig fields (with the data's
        sample_rate), `mel_frames` the frames kept (> 0), `num_samples` the clip length T in samples."""
        self.image_size, self.channels = image_size, channels
        self.input = "image" if mel is None else "log_mel"
        self.mel = None if mel is None else _mel_config(mel)
        self.mel_frames, self.num_samples, self.griffin_lim_iters = int(mel_frames), int(num_samples), griffin_lim_iters
        self.model_kwargs = model_kwargs
        self.reconstruction, self.reconstruction_weight = reconstruction, reconstruction_weight
        self.perceptual_weight, self.perceptual_network = perceptual_weight, perceptual_network
        self.perceptual_fn = perceptual_fn
        self.adversarial_weight, self.gan_loss, self.gan_start_step = adversarial_weight, gan_loss, gan_start_step
        self.lecam_weight, self.lecam_decay, self.r1_weight = lecam_weight, lecam_decay, r1_weight
        self.discriminator_overrides = discriminator_overrides
        self.adaptive_gan_weight = adaptive_gan_weight
        self.entropy_anneal_factor, self.entropy_anneal_steps = entropy_anneal_factor, entropy_anneal_steps
        factor = 2 ** (len(model_kwargs["channel_multipliers"]) - 1)
        # Log-mel grids are [n_mels, frames]: rarely square (SpecMaskGIT's 80 x 848 gives 5 x 53 tokens).
        self.input_grid = (image_size, image_size) if mel is None else (self.mel.n_mels, self.mel_frames)
        self.token_grid = (self.input_grid[0] // factor, self.input_grid[1] // factor)
        q = model_kwargs["quantizer_kwargs"]
        kind = model_kwargs["quantizer"]
        self.continuous = kind in CONTINUOUS
        self.codebook_size = {"fsq": lambda: math.prod(q["levels"]), "lfq": lambda: 2 ** model_kwargs["embed_dim"],
                              "kl": lambda: 0}.get(kind, lambda: q["codebook_size"])()
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
            # Runs saved before issue 15 have no fsq_bound and keep the bound they were trained with.
            qkw = dict(levels=tuple(m.fsq_levels), bound=m.get("fsq_bound", "maskgen_v1"))
            embed_dim = len(m.fsq_levels)
        elif kind == "kl":
            qkw = dict(kl_weight=loss.kl_weight)
            embed_dim = m.embed_dim
        else:  # lfq
            qkw = dict(**m.lfq.to_dict())
            embed_dim = m.lfq_bits
        use_gan = loss.adversarial_weight > 0
        if m.get("discriminator", "patch") == "stylegan":
            discriminator = dict(kind="stylegan", image_size=config.data.image_size,
                                 channel_multiplier=m.get("stylegan_channel_multiplier", 1),
                                 max_channels=m.get("stylegan_max_channels", 512),
                                 blur_resample=m.get("stylegan_blur_resample", True))
        else:
            discriminator = dict(kind="patch", base_channels=m.discriminator_channels,
                                 num_downsamples=m.discriminator_downsamples)
        model_kwargs = dict(
            base_channels=m.base_channels, channel_multipliers=tuple(m.channel_multipliers),
            num_res_blocks=m.num_res_blocks, quantizer=kind, quantizer_kwargs=qkw, embed_dim=embed_dim,
            discriminator=discriminator if use_gan else None,
            dtype=_DTYPES[config.compute_dtype], conv_variant=m.get("conv_variant", "maskgen"),
            pixel_range=m.get("pixel_range", "minus_one_to_one"),
            pre_quantizer_norm=kind == "lfq" and m.get("lfq_group_norm", False),
        )
        perceptual_fn = None
        if loss.perceptual_weight > 0:
            perceptual_fn = perceptual_network(loss.perceptual_network)
        audio = {}
        if m.get("input", "image") == "log_mel":
            num_samples, sample_rate = audio_shape(data_info)
            mel = mel_settings(config.mel.to_dict(), sample_rate)
            audio = dict(mel=mel, num_samples=num_samples, griffin_lim_iters=m.get("griffin_lim_iters", 32),
                         mel_frames=m.get("mel_frames", 0) or _num_frames(num_samples, mel["hop"]))
        return cls(
            image_size=config.data.image_size, model_kwargs=model_kwargs, **audio,
            channels=1 if audio else int(data_info["image_shape"][-1]),
            reconstruction=loss.reconstruction, reconstruction_weight=loss.reconstruction_weight,
            perceptual_weight=loss.perceptual_weight, perceptual_network=loss.perceptual_network,
            adversarial_weight=loss.adversarial_weight, gan_loss=loss.gan_loss, gan_start_step=loss.gan_start_step,
            lecam_weight=loss.lecam_weight, lecam_decay=loss.lecam_decay, r1_weight=loss.r1_weight,
            discriminator_overrides=dict(lr=loss.discriminator_lr, b1=loss.discriminator_b1),
            perceptual_fn=perceptual_fn, adaptive_gan_weight=loss.get("adaptive_gan_weight", False),
            entropy_anneal_factor=loss.get("entropy_anneal_factor", 0.0),
            entropy_anneal_steps=loss.get("entropy_anneal_steps", 0),
        )

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        m, loss = config.model, config.loss
        spec = {**CONFIG_SPEC, **QUANTIZER_SPECS.get(m.quantizer, {})}
        log_mel = m.get("input", "image") == "log_mel"
        if log_mel:
            spec.update(MEL_SPEC)
        problems = recipe_problems(config, data_info, spec, needs="audio" if log_mel else "images")
        if log_mel:
            problems.extend(_log_mel_problems(config, data_info, problems))
        elif problems.ok("model.channel_multipliers", "data.image_size"):
            factor = 2 ** (len(m.channel_multipliers) - 1)
            if config.data.image_size % factor:
                problems.append(f"config.data.image_size={config.data.image_size} is not divisible by the "
                                f"downsampling factor {factor} (from model.channel_multipliers)")
        if (problems.ok("loss.perceptual_weight", "loss.perceptual_network") and loss.perceptual_weight > 0
                and not (loss.perceptual_network == "digit_classifier" or loss.perceptual_network.startswith("mae:"))):
            problems.append(f"config.loss.perceptual_network must be one of {PERCEPTUAL_NETWORKS}, got "
                            f"{loss.perceptual_network!r}")
        if (m.get("discriminator", "patch") == "stylegan" and not log_mel
                and problems.ok("data.image_size", "model.discriminator")
                and (config.data.image_size < 4 or config.data.image_size & (config.data.image_size - 1))):
            problems.append(f"config.model.discriminator='stylegan' needs a power-of-two config.data.image_size "
                            f">= 4 (it halves the images down to 4x4), got {config.data.image_size}")
        if m.quantizer == "fsq" and problems.ok("model.fsq_levels") and math.prod(m.fsq_levels) >= 2 ** 31:
            problems.append(f"config.model.fsq_levels={tuple(m.fsq_levels)}: the codebook prod = "
                            f"{math.prod(m.fsq_levels)} must be < 2**31 (int32 codes)")
        return problems

    def info(self) -> dict[str, Any]:
        """token_shape is the grid of positions; a continuous (kl) run also gives "latent_channels" D
        (its codes are float32 [h, w, D]) and "continuous": True, with codebook_size 0. A log-mel run
        adds "decodes_to": "log_mel" (decode returns the scaled log-mel [B, n_mels, frames, 1]),
        "sample_rate", "mel" (MelConfig.to_dict()), "mel_frames", "num_samples" (the clip length T)
        and "griffin_lim_iters" (maskgen.runs.AudioDecoder reads them)."""
        shape = self.token_grid + ((self.num_levels,) if self.model_kwargs["quantizer"] == "rvq" else ())
        info = {"codebook_size": self.codebook_size, "token_shape": shape, "num_levels": self.num_levels,
                "quantizer": self.model_kwargs["quantizer"], "continuous": self.continuous}
        if self.continuous:
            info["latent_channels"] = self.model_kwargs["embed_dim"]
        if self.mel is not None:
            info.update(decodes_to="log_mel", sample_rate=self.mel.sample_rate, mel=self.mel.to_dict(),
                        mel_frames=self.mel_frames, num_samples=self.num_samples,
                        griffin_lim_iters=self.griffin_lim_iters)
        return info

    def optimizer_groups(self):
        return discriminator_groups(self.model_kwargs["discriminator"] is not None, self.discriminator_overrides)

    def make_model(self, rngs: nnx.Rngs) -> Tokenizer:
        return Tokenizer(channels=self.channels, rngs=rngs, **self.model_kwargs)

    # ---------------------------------------------------------------- training
    def _reconstruction_loss(self, x, x_rec):
        diff = x_rec - x
        return jnp.abs(diff).mean() if self.reconstruction == "l1" else jnp.square(diff).mean()

    def inputs(self, batch) -> jax.Array:
        """What the autoencoder reconstructs: batch["image"] [B, H, W, C] in [-1, 1], or for log-mel
        input the scaled log-mel of batch["audio"] [B, T, 1] as [B, n_mels, mel_frames, 1]."""
        if self.mel is None:
            return batch["image"]
        if "audio" not in batch:
            raise ValueError(f"a log-mel tokenizer reads batch['audio'] [B, T, 1]; the batch has {sorted(batch)}")
        return scaled_log_mel(batch["audio"], self.mel, self.mel_frames)

    def loss(self, model: Tokenizer, batch, rng, step):
        x = self.inputs(batch)
        quant_rng, _ = jax.random.split(rng)
        z_q, codes, qaux = model.encode(x, train=True, rng=quant_rng)
        features = model.decoder.features(z_q)
        x_rec = model.output_pixels(model.decoder.conv_out(features).astype(jnp.float32))
        rec = self._reconstruction_loss(x, x_rec)
        total = self.reconstruction_weight * rec + qaux["loss"]
        metrics = {"reconstruction": rec, "quantizer_loss": qaux["loss"],
                   **{f"quantizer/{k}": v for k, v in qaux.items() if k != "loss"}}
        if self.entropy_anneal_factor > 0 and "entropy_loss" in qaux:
            extra = entropy_anneal_multiplier(step, self.entropy_anneal_factor, self.entropy_anneal_steps)
            total = total + extra * qaux["entropy_loss"]
            metrics["quantizer/entropy_anneal_extra"] = extra
        if self.perceptual_fn is not None:
            perceptual = perceptual_distance(self.perceptual_fn, x, x_rec)
            total = total + self.perceptual_weight * perceptual
            metrics["perceptual"] = perceptual
        if model.discriminator is not None:
            gan_weight = jnp.asarray(self.adversarial_weight, jnp.float32)
            if self.adaptive_gan_weight:
                adaptive = self._adaptive_weight(model, features, x, model.discriminator)
                gan_weight = gan_weight * adaptive
                metrics["gan/adaptive_weight"] = adaptive
            gan_total, gan_metrics = self._gan_losses(model.discriminator, x, x_rec, step, gan_weight)
            total = total + gan_total
            metrics.update(gan_metrics)
        return total, metrics

    def _generator_rec_loss(self, x, x_rec):
        """Weighted reconstruction + perceptual terms (the "L_rec" of VQGAN's adaptive weight)."""
        total = self.reconstruction_weight * self._reconstruction_loss(x, x_rec)
        if self.perceptual_fn is not None:
            total = total + self.perceptual_weight * perceptual_distance(self.perceptual_fn, x, x_rec)
        return total

    def _generator_gan_loss(self, logits):
        return -logits.mean() if self.gan_loss == "hinge" else jax.nn.softplus(-logits).mean()

    def _adaptive_weight(self, model: Tokenizer, features, x, disc):
        """VQGAN's lambda (arXiv 2012.09841, Eq. 7): ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + 1e-4),
        clipped to [0, 1e4] and detached, with G_L the decoder's last conv kernel. Both gradients
        are taken at the current values with everything else held fixed (only the last layer
        varies), so they cost one decoder head and one discriminator pass."""
        sg = jax.lax.stop_gradient
        features = sg(features)
        frozen_disc = _frozen(disc)
        graphdef, state = nnx.split(model.decoder.conv_out)
        state = jax.lax.stop_gradient(nnx.to_pure_dict(state))

        def reconstruct(kernel):  # the decoder's output as a function of its last kernel only
            layer = nnx.merge(graphdef, {**state, "kernel": kernel})
            return model.output_pixels(layer(features).astype(jnp.float32))

        kernel = state["kernel"]
        g_rec = jax.grad(lambda k: self._generator_rec_loss(x, reconstruct(k)))(kernel)
        g_gan = jax.grad(lambda k: self._generator_gan_loss(frozen_disc(reconstruct(k))))(kernel)
        weight = jnp.linalg.norm(g_rec) / (jnp.linalg.norm(g_gan) + _ADAPTIVE_EPS)
        return sg(jnp.clip(weight, 0.0, _ADAPTIVE_MAX))

    def _gan_losses(self, disc, x, x_rec, step, gan_weight):
        on = (step >= self.gan_start_step).astype(jnp.float32)
        # Generator term: the discriminator is frozen.
        g_loss = self._generator_gan_loss(_frozen(disc)(x_rec))
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
        total = on * (gan_weight * g_loss + d_loss + self.lecam_weight * lecam)
        metrics = {"gan/generator": g_loss, "gan/discriminator": d_loss, "gan/lecam": lecam,
                   "gan/logits_real": real.mean(), "gan/logits_fake": fake.mean(), "gan/active": on}
        if self.r1_weight > 0:
            r1 = r1_penalty(disc, x)
            total = total + on * self.r1_weight * r1
            metrics["gan/r1"] = r1
        return total, metrics

    # ---------------------------------------------------------------- inference
    def reconstruct(self, model: Tokenizer, batch, rng):
        """A log-mel run also returns "log_mel": its input, the scaled log-mel [B, n_mels, frames, 1]
        ("reconstruction" is the decoded one, on the same scale)."""
        x = self.inputs(batch)
        _, codes, _ = model.encode(x, train=False)
        out = {"reconstruction": model.decode_codes(codes), "codes": codes}
        if self.mel is not None:
            out["log_mel"] = x
        return out

    def sample(self, model: Tokenizer, batch, rng):
        out = self.reconstruct(model, batch, rng)
        rows = {"original": self.inputs(batch), "reconstruction": out["reconstruction"]}
        if self.mel is not None:  # spectrograms are drawn with low frequencies at the bottom
            rows = {k: jnp.clip(v[:, ::-1], -1.0, 1.0) for k, v in rows.items()}
        return rows

    def encode(self, model: Tokenizer, batch, rng):
        """int codes [B, h, w(, K)], or for a kl run the latent means, float32 [B, h, w, D]. A log-mel
        run reads batch["audio"] [B, T, 1] (its h, w = n_mels / f, mel_frames / f)."""
        return model.encode(self.inputs(batch), train=False)[1]

    def decode(self, model: Tokenizer, batch, rng):
        """batch["codes"]: what `encode` returns (ids, or float latents for a kl run) -> images."""
        return model.decode_codes(batch["codes"])


# -------------------------------------------------------------------- log-mel input
def _mel_config(mel: dict) -> audio_features.MelConfig:
    return audio_features.MelConfig.from_dict(mel)


def _num_frames(num_samples: int, hop: int) -> int:
    return audio_features.num_frames(num_samples, hop)


def audio_shape(data_info: dict[str, Any]) -> tuple[int | None, int | None]:
    """(clip length T in samples, sample rate) of the data's audio field (None where unknown)."""
    for spec in (data_info.get("fields") or {}).values():
        if getattr(spec, "kind", None) == "audio":
            return spec.shape[0], int(spec.sample_rate)
    return None, data_info.get("sample_rate")


def mel_settings(mel: dict, sample_rate: int) -> dict:
    """config.mel with the data's sample rate, as MelConfig fields."""
    return {**{k: v for k, v in mel.items()}, "sample_rate": int(sample_rate)}


def scaled_log_mel(audio: jax.Array, mel, frames: int) -> jax.Array:
    """audio [B, T, 1] -> scale_log_mel(log_mel) of its first `frames` frames, [B, n_mels, frames, 1]."""
    features = audio_features
    if audio.ndim != 3 or audio.shape[-1] != 1:
        raise ValueError(f"audio must be mono [B, T, 1], got shape {tuple(audio.shape)}")
    lm = features.log_mel(audio[..., 0].astype(jnp.float32), mel)
    if lm.shape[1] < frames:
        raise ValueError(f"{audio.shape[1]} samples give {lm.shape[1]} mel frames at hop {mel.hop}; the tokenizer "
                         f"needs {frames}")
    return jnp.transpose(features.scale_log_mel(lm[:, :frames]), (0, 2, 1))[..., None]


def _log_mel_problems(config: ml_collections.ConfigDict, data_info: dict[str, Any], problems) -> list[str]:
    """The checks that combine the log-mel settings with the data and the downsampling factor."""
    m, mel, loss, out = config.model, config.mel, config.loss, []
    if not problems.ok("data.name"):
        return out
    num_samples, sample_rate = audio_shape(data_info)
    mel_keys = [f"mel.{k}" for k in ("n_fft", "hop", "n_mels", "sample_rate", "win_length", "f_max")]
    if not problems.ok(*mel_keys):
        return out
    if mel.get("sample_rate") is not None and sample_rate is not None and mel.sample_rate != sample_rate:
        out.append(f"config.mel.sample_rate={mel.sample_rate}: the {config.data.name!r} audio is at {sample_rate} Hz; "
                   f"set config.mel.sample_rate={sample_rate} (or remove it: the data's rate is used)")
    if mel.get("win_length") is not None and mel.win_length > mel.n_fft:
        out.append(f"config.mel.win_length={mel.win_length} is longer than config.mel.n_fft={mel.n_fft}")
    if mel.get("f_max") is not None and sample_rate is not None and mel.f_max > sample_rate / 2:
        out.append(f"config.mel.f_max={mel.f_max} is above the Nyquist frequency {sample_rate / 2:g} Hz of the "
                   f"{sample_rate} Hz data")
    if out:
        return out
    try:  # MelConfig's own checks (f_min < f_max <= Nyquist, power 1 or 2, ...)
        _mel_config(mel_settings(mel.to_dict(), sample_rate or mel.get("sample_rate", 16000)))
    except (TypeError, ValueError) as err:
        return [f"config.mel: {err}"]
    if num_samples is not None and mel.n_fft // 2 >= num_samples:
        out.append(f"config.mel.n_fft={mel.n_fft} is too long for {num_samples}-sample clips (the centred STFT "
                   f"reflects n_fft // 2 samples at each end)")
    if problems.ok("model.channel_multipliers", "model.mel_frames"):
        factor = 2 ** (len(m.channel_multipliers) - 1)
        available = None if num_samples is None else num_samples // mel.hop
        frames = m.get("mel_frames", 0) or available
        if frames is None:
            out.append(f"the {config.data.name!r} clips vary in length: set config.model.mel_frames (a multiple of "
                       f"{factor})")
        if available is not None and frames > available:
            out.append(f"config.model.mel_frames={frames}: {num_samples}-sample clips give only {available} frames "
                       f"at config.mel.hop={mel.hop}")
        if mel.n_mels % factor:
            out.append(f"config.mel.n_mels={mel.n_mels} is not divisible by the downsampling factor {factor} "
                       "(from model.channel_multipliers)")
        if frames is not None and frames % factor:
            what = ("config.model.mel_frames" if m.get("mel_frames", 0)
                    else f"the clip's frame count (T // hop = {num_samples} // {mel.hop})")
            out.append(f"{what}={frames} is not divisible by the downsampling factor {factor} (from "
                       "model.channel_multipliers); set config.model.mel_frames to a multiple of it, or change "
                       "config.mel.hop")
    if m.get("discriminator", "patch") == "stylegan" and loss.adversarial_weight > 0:
        out.append("config.model.discriminator='stylegan' needs square power-of-two images; a log-mel tokenizer "
                   "takes the 'patch' discriminator")
    if loss.perceptual_weight > 0:
        out.append(f"config.loss.perceptual_weight={loss.perceptual_weight}: the perceptual networks "
                   f"{PERCEPTUAL_NETWORKS} read images, not spectrograms; set it to 0 for model.input='log_mel'")
    return out


# -------------------------------------------------------------------- regularisers


def discriminator_groups(has_discriminator: bool, overrides: dict):
    """`optimizer_groups` of a model whose `discriminator` submodule trains with its own optimizer
    settings (`overrides`, e.g. lr and b1), every other parameter with the config's."""
    if not has_discriminator:
        return None, {}

    def labels(params):
        return {k: jax.tree.map(lambda _: "discriminator" if k == "discriminator" else "default", v)
                for k, v in params.items()}

    return labels, {"discriminator": overrides}


def r1_penalty(disc: nnx.Module, x: jax.Array) -> jax.Array:
    """mean over the batch of ||grad_x sum D(x)||^2 on real images x (R1, arXiv 1801.04406), the form
    of MaskGIT's and MAGVIT's `r1_gradient_penalty` (weighted by `r1_weight`, without StyleGAN's
    1/2). The gradient reaches the discriminator's parameters through the second derivative."""
    graphdef, state = nnx.split(disc)
    grad_x = jax.grad(lambda xx: nnx.merge(graphdef, state)(xx).sum())(x)
    return jnp.square(grad_x.astype(jnp.float32)).reshape(x.shape[0], -1).sum(-1).mean()


def entropy_anneal_multiplier(step, factor: float, steps: int) -> jax.Array:
    """MAGVIT's entropy-loss annealing (videogvt/trainers/vqgan_trainer.py, `entropy_loss_enlarge_*`):
    the quantizer's weighted entropy loss is added a further factor * max(0, 1 - step / steps) times,
    so its weight starts at (1 + factor) x and decays linearly to 1 x at `steps`."""
    if steps <= 0:
        return jnp.zeros((), jnp.float32)
    return factor * jnp.maximum(0.0, 1.0 - jnp.asarray(step, jnp.float32) / steps)


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
