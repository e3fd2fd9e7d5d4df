"""Model modules (Flax NNX, used functionally through split/merge)."""
