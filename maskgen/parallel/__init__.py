"""Device mesh, logical-axis sharding rules and global batches (MaxText-style logical axes).

Parameters carry logical axis names (`embed`, `mlp`, `heads`, ...). `config.sharding_rules` maps
them to the mesh axes of `config.mesh`, so a model changes parallelism without code changes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from maskgen.config import batch_axes, mesh_shape


def make_mesh(mesh_spec: Sequence[Sequence[Any]]) -> jax.sharding.Mesh:
    """Builds a mesh from `(("data", -1), ("fsdp", 1), ("tensor", 1))` over all devices.

    Axes are `Auto` (GSPMD propagates shardings inside jit); the explicit-sharding default of
    `jax.make_mesh` rejects gathers such as an embedding lookup on batch-sharded ids.
    """
    sizes = mesh_shape(mesh_spec, jax.device_count())
    return jax.make_mesh(
        tuple(sizes.values()), tuple(sizes.keys()), axis_types=(AxisType.Auto,) * len(sizes)
    )


def logical_rules(sharding_rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """Normalises config rules (lists from JSON) into the tuple form flax expects."""
    out = []
    for logical, physical in sharding_rules:
        if isinstance(physical, (list, tuple)):
            physical = tuple(physical)
        out.append((str(logical), physical))
    return tuple(out)


@contextlib.contextmanager
def sharding_context(mesh: jax.sharding.Mesh, sharding_rules):
    """Mesh + logical axis rules: needed wherever NNX parameters are created or traced.

    For a quick look at a model outside the loop:
        with sharding_context(make_mesh(config.mesh), config.sharding_rules):
            model = recipe.make_model(nnx.Rngs(0))
    """
    with jax.set_mesh(mesh), nnx.logical_axis_rules(logical_rules(sharding_rules)):
        yield


def batch_sharding(mesh: jax.sharding.Mesh, sharding_rules, ndim: int = 1) -> NamedSharding:
    """Sharding of a batch-leading array: dim 0 over the batch axes, the rest replicated."""
    axes = batch_axes(sharding_rules)
    return NamedSharding(mesh, P(axes if axes else None, *([None] * (ndim - 1))))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh, sharding_rules) -> dict[str, jax.Array]:
    """Turns this process's rows of a batch into global arrays sharded over the batch axes."""
    return {
        key: jax.make_array_from_process_local_data(batch_sharding(mesh, sharding_rules, value.ndim), value)
        for key, value in local_batch.items()
    }


ACTIVATION_AXES = ("batch", None, None)  # [B, T, width] between blocks: batch-sharded, rest replicated


def constrain(x: jax.Array, logical_axes: Sequence[str | None] = ACTIVATION_AXES) -> jax.Array:
    """Pins an activation's sharding by logical axis names, mapped with the active rules.

    A no-op outside a mesh (`jax.set_mesh`) with logical rules, e.g. in eager tests. Models call it
    at block boundaries so XLA's propagation cannot drift into a layout the config did not ask for.
    """
    from flax.core import spmd as flax_spmd

    rules = flax_spmd.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh is None or mesh.empty:
        return x
    lookup, used, spec = dict(rules), set(), []
    for name in logical_axes:
        physical = lookup.get(name) if name is not None else None
        axes = () if physical is None else (physical,) if isinstance(physical, str) else tuple(physical)
        axes = tuple(a for a in axes if a in mesh.axis_names and a not in used)
        used.update(axes)
        spec.append(axes if len(axes) > 1 else axes[0] if axes else None)
    return jax.lax.with_sharding_constraint(x, P(*spec))


def to_host(tree):
    """Fetches (possibly multi-process) global arrays to numpy on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
