"""maskgen: masked generative modeling (MAE, tokenizers, masked token models) in JAX/Flax NNX."""

import importlib.metadata as _metadata
import os as _os

__version__ = "0.1.0"

# XLA:CPU settings for every maskgen process, added to XLA_FLAGS here because XLA reads that
# variable once, when JAX creates its CPU backend (so `import maskgen` must come before the first
# computation; a backend JAX already started keeps its flags). They are `xla_cpu_*` flags, which
# other backends ignore.
#   xla_cpu_experimental_ynn_fusion_type=-individual_dot: jaxlib 0.10 hands every single dot to
#     YNNPACK by default; XLA's Eigen matmul (what it used before) ran the B3 transformer train
#     step 5% faster (1.69 vs 1.78 s median, faster in 10 of 10 alternating rounds, 2-core AVX-512
#     Xeon) and the MaskGIT digits step 3% faster (docs/benchmarks.md, B3/B4). Reductions stay on
#     YNNPACK, which beats XLA's own loops on them. Same numbers up to float rounding.
# Applied only for the jaxlib versions it was measured on (an unknown flag in XLA_FLAGS aborts
# JAX at startup), never over a value the user set, and not at all with MASKGEN_XLA_CPU_FLAGS=0.
CPU_XLA_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_dot"}
_MEASURED_JAXLIB = ("0.10.",)


def set_cpu_xla_flags(env=None) -> list:
    """Appends CPU_XLA_FLAGS that XLA_FLAGS does not already set; returns the flags added."""
    env = _os.environ if env is None else env
    if env.get("MASKGEN_XLA_CPU_FLAGS", "1") == "0":
        return []
    try:
        jaxlib_version = _metadata.version("jaxlib")
    except _metadata.PackageNotFoundError:
        return []
    if not jaxlib_version.startswith(_MEASURED_JAXLIB):
        return []
    current = env.get("XLA_FLAGS", "")
    added = [f"--{name}={value}" for name, value in CPU_XLA_FLAGS.items() if name not in current]
    if added:
        env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


set_cpu_xla_flags()
