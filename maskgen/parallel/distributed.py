"""Multi-process (multi-host) start-up: `jax.distributed.initialize` from environment variables.

Every process of a multi-process run executes the same command; the environment tells each one
who it is. `maskgen.main` calls `maybe_initialize()` before JAX touches a backend.

  MASKGEN_DISTRIBUTED=auto
      Call `jax.distributed.initialize()` and let JAX detect the cluster (Cloud TPU pods and
      slices, Slurm, Open MPI). Any of the variables below that are set are passed on and
      override what JAX would detect.

  MASKGEN_COORDINATOR=host:port      (the address of process 0, reachable from every process)
  MASKGEN_NUM_PROCESSES=N            (total number of processes, >= 1)
  MASKGEN_PROCESS_ID=i               (this process, 0 <= i < N)
  MASKGEN_LOCAL_DEVICE_IDS=0,1,...   (optional: the GPUs this process uses; CPU processes take
                                      their device count from XLA_FLAGS instead, see below)
      An explicit cluster: all three of the first variables are required together. For
      example, two processes on one machine, 4 virtual CPU devices each (8 in the mesh):

        export XLA_FLAGS=--xla_force_host_platform_device_count=4
        MASKGEN_COORDINATOR=localhost:12355 MASKGEN_NUM_PROCESSES=2 MASKGEN_PROCESS_ID=0 maskgen train ... &
        MASKGEN_COORDINATOR=localhost:12355 MASKGEN_NUM_PROCESSES=2 MASKGEN_PROCESS_ID=1 maskgen train ...

None of them set, or MASKGEN_DISTRIBUTED=off (which ignores the others): nothing happens, a
single process.

On CPU, cross-process collectives use gloo (jax's `jax_cpu_collectives_implementation`, whose
default is already "gloo" in jax 0.10; it is set here only if it was left unset, and an
explicit choice such as "mpi" is kept). Only process 0 writes metrics, config.json and the
shared parts of checkpoints; every process must run the same steps (the train loop does).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("maskgen")

ENV_MODE = "MASKGEN_DISTRIBUTED"
ENV_COORDINATOR = "MASKGEN_COORDINATOR"
ENV_NUM_PROCESSES = "MASKGEN_NUM_PROCESSES"
ENV_PROCESS_ID = "MASKGEN_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "MASKGEN_LOCAL_DEVICE_IDS"


def _get(env, name: str) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _int(env, name: str, minimum: int) -> int | None:
    value = _get(env, name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None
    if number < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return number


def _coordinator(env) -> str | None:
    value = _get(env, ENV_COORDINATOR)
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{ENV_COORDINATOR}={value!r} must be host:port (e.g. 10.0.0.2:12355), "
                         "with a port in 1..65535")
    return value


def _device_ids(env) -> list[int] | None:
    value = _get(env, ENV_LOCAL_DEVICE_IDS)
    if value is None:
        return None
    try:
        ids = [int(part) for part in value.split(",")]
    except ValueError:
        raise ValueError(f"{ENV_LOCAL_DEVICE_IDS}={value!r} must be comma-separated integers (e.g. 0,1)") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{ENV_LOCAL_DEVICE_IDS}={value!r} must be distinct non-negative integers")
    return ids


def distributed_settings(env=None) -> dict | None:
    """The keyword arguments for `jax.distributed.initialize` that `env` (default: os.environ) asks
    for, or None for a single-process run. Raises ValueError naming a variable with a bad value."""
    env = os.environ if env is None else env
    mode = (_get(env, ENV_MODE) or "").lower()
    if mode not in ("", "auto", "off"):
        raise ValueError(f"{ENV_MODE}={env.get(ENV_MODE)!r}: use 'auto' (detect the cluster), 'off', or leave it "
                         f"unset and give {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}")
    if mode == "off":
        return None
    settings = dict(
        coordinator_address=_coordinator(env),
        num_processes=_int(env, ENV_NUM_PROCESSES, 1),
        process_id=_int(env, ENV_PROCESS_ID, 0),
        local_device_ids=_device_ids(env),
    )
    if settings["num_processes"] is not None and settings["process_id"] is not None \
            and settings["process_id"] >= settings["num_processes"]:
        raise ValueError(f"{ENV_PROCESS_ID}={settings['process_id']} must be below "
                         f"{ENV_NUM_PROCESSES}={settings['num_processes']}")
    given = {k: v for k, v in settings.items() if v is not None}
    if mode == "auto":
        return given
    if not given:
        return None
    required = {ENV_COORDINATOR: "coordinator_address", ENV_NUM_PROCESSES: "num_processes",
                ENV_PROCESS_ID: "process_id"}
    missing = [name for name, key in required.items() if key not in given]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: a multi-process run needs {ENV_COORDINATOR}, "
                         f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} together (or {ENV_MODE}=auto)")
    return given


def maybe_initialize(env=None) -> bool:
    """Calls `jax.distributed.initialize` if the environment asks for it (see the module docstring).

    Call it before any JAX computation or backend query. Returns True if this call initialised
    the distributed system; False for a single-process run or if it was already initialised.
    """
    settings = distributed_settings(env)
    if settings is None:
        return False
    import jax

    if jax.distributed.is_initialized():
        return False
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "auto-detected"
    log.info("initialising jax.distributed (%s)", shown)
    jax.distributed.initialize(**settings)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True
