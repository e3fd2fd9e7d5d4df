"""B9: the checkpoint guard (a finite check and a checksum of every array) vs the train step.

Before every save, maskgen audits the train state and the EMA params in one jitted pass
(`maskgen.checkpoint.audit`): a NaN or inf anywhere stops the run instead of being written, and
each array's checksum is stored so that restores can verify what they read. Restoring audits again.
This measures that pass against the train step of the same run, on the real loop's pieces
(`maskgen.train.setup`, its optimizer, its jitted update), and the cost per step at the config's
checkpoint interval.

    python -m benchmarks.save_guard                 # MAE digits, small (the README run) and base
    python -m benchmarks.save_guard --size smoke
"""

from __future__ import annotations

import jax

from benchmarks import common
from maskgen import config as config_lib
from maskgen import parallel
from maskgen import train as train_lib
from maskgen.checkpoint import _audit_jit

CONFIGS = {"smoke": ["experiments/mae_digits.py:size=tiny"],
           "default": ["experiments/mae_digits.py:size=small", "experiments/mae_digits.py:size=base"]}


def measure(spec: str, repeats: int) -> list:
    config = config_lib.load_config_file(spec)
    run = train_lib.setup(config)
    tx, schedule = train_lib.make_optimizer(config.optimizer, config.total_steps, *run.recipe.optimizer_groups())
    jit_init, _, (state_sh, ema_sh) = train_lib._state_initializer(run, tx)
    with run.context():
        state, ema = jit_init(jax.random.key(0))
    source = train_lib.make_source(config.data.name, config.data.train_split, None)
    local = next(iter(train_lib.train_dataset(
        source, run.preprocess, seed=0, global_batch_size=config.batch_size, process_index=0, process_count=1)))
    batch = parallel.global_batch(local, run.mesh, run.rules)
    step_fn = train_lib.make_train_step(run, tx, schedule, jax.random.key(1))
    leaves = jax.tree.leaves((state, ema))
    with jax.set_mesh(run.mesh):
        step = common.compile_fn(jax.jit(step_fn, in_shardings=(state_sh, ema_sh, None)), state, ema, batch)
        guard = common.compile_fn(_audit_jit, leaves)
        times = common.alternate({"step": lambda: step.call(state, ema, batch)[2]["loss"],
                                  "guard": lambda: guard.call(leaves)}, repeats=repeats, rounds=2)
    t_step, t_guard = common.median(times["step"]), common.median(times["guard"])
    megabytes = sum(x.nbytes for x in leaves) / 2**20
    per_step = t_guard / (t_step * config.checkpoint_every)
    return [spec.split(":")[-1], f"{megabytes:.1f}", common.fmt_seconds(t_step), common.fmt_seconds(t_guard),
            f"{t_guard / t_step:.3f}", config.checkpoint_every, f"{100 * per_step:.4f}%"], t_guard / t_step


def main():
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    repeats = args.repeats or (2 if args.size == "smoke" else 5)
    rows, ratios = [], []
    for spec in CONFIGS[args.size]:
        row, ratio = measure(spec, repeats)
        rows.append(row)
        ratios.append(ratio)
    worst = max(ratios)
    common.report("B9", "checkpoint guard (finite check + checksums of state and EMA) vs one train step",
                  ["config", "state+EMA (MiB)", "train step", "guard", "guard / step", "checkpoint_every",
                   "cost per step"], rows,
                  f"the guard costs at most {worst:.3f}x one train step, once per checkpoint",
                  ratio=worst, claim="< 1 step per save", holds=worst < 1.0, json_path=args.json)


if __name__ == "__main__":
    main()
