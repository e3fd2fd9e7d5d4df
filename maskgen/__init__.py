"""maskgen: masked generative modeling (MAE, tokenizers, masked token models) in JAX/Flax NNX."""

__version__ = "0.1.0"
