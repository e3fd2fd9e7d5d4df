r"""B22: the MAE family on `moved_digits`: every variant against plain MAE at the same budget.

Each variant of `experiments/mae_family.py` (ColorMAE, HPM, GMML, MaskAlign, DMAE, MR-MAE; each
changes one thing of plain MAE, arXiv 2111.06377) is pretrained at the same model, data, batch
and steps for every seed, then evaluated two ways:

  * linear probe (frozen encoder, mean-pooled tokens, the quick protocol), with the probe's
    baselines from each plain-MAE run: the same encoder at random init (its seed varies with the
    run's) and raw pixels;
  * end-to-end fine-tuning (the `finetune` evaluator: AdamW with layer-wise lr decay), with a
    from-scratch baseline (the same fine-tune from a random init).

The table gives mean +- std over seeds, the difference to plain MAE, the paper's claimed
direction, and a verdict: "holds" when the variant beats MAE by more than twice the standard
error of the difference, "reversed" when it loses by as much, "within noise" otherwise. A
second table gives each variant's train-step time as a ratio to plain MAE's, timed in one
process with the steps interleaved (the teacher forward and the loss predictor are in the step).

The teacher variants read one frozen teacher run: a larger plain MAE (`method=teacher`),
trained once before them; its cost is reported separately (it is paid once, not per step).
So that their gain can be told from their extra compute, the sweep also trains plain MAE for 7x
the steps (`method=mae_long`: the teacher's training plus the costliest student), printed as a
reference row and, in a third table, as the baseline the teacher variants are read against.

    python -m benchmarks.mae_family --workdir runs/mae_family          # the table in docs/mae_family.md
    python -m benchmarks.mae_family --methods mae,colormae --seeds 0,1
    python -m benchmarks.mae_family --size smoke                       # tiny runs: only checks the script
    python -m benchmarks.mae_family --workdir runs/mae_family --table-only   # the table so far; trains nothing

Runs already finished under --workdir are reused (each writes result.json), so an interrupted
sweep continues where it stopped. Several sweeps may share one --workdir: each run is claimed by
one process (a `claimed_by` file with its pid; a dead process's claim is taken over) and the
others go on with the runs that are left, then print the same table. On the 2-core CPU, one
single-threaded sweep per core did 1.66x the steps per second of one sweep on both cores
(train step 244 ms on each core against 203 ms on both):

    for core in 0 1; do XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      taskset -c $core python -m benchmarks.mae_family --workdir runs/mae_family --no-cost & done
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

TITLE = "MAE family on moved_digits: probe and fine-tune accuracy vs plain MAE, mean +- std over seeds"
# Plain MAE at the compute of a whole teacher pipeline: a reference row, not a variant (no claim,
# and its train step is plain MAE's, so it is left out of the step-time table).
REFERENCE = "mae_long"
EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def _family():
    sys.path.insert(0, EXPERIMENTS)
    import mae_family

    return mae_family


def _config(method: str, size: str, seed: int, overrides: list[str], steps: int | None = None):
    from maskgen import config as config_lib

    arg = f"method={method},size={size},seed={seed}" + (f",steps={steps}" if steps else "")
    config = config_lib.load_config_file(os.path.join(EXPERIMENTS, "mae_family.py") + ":" + arg)
    config_lib.apply_overrides(config, overrides)
    return config


def _eval_overrides(size: str, seed: int) -> list[str]:
    out = [f"evals.probe.random_init_seed={12345 + seed}", f"evals.finetune.seed={seed}",
           f"evals.finetune.random_init_seed={12345 + seed}"]
    if size == "tiny":
        out += ["evals.probe.max_examples=64", "evals.probe.steps=20", "evals.finetune.max_examples=64",
                "evals.finetune.steps=4"]
    return out


def train_one(root: str, method: str, size: str, seed: int, teacher: str, steps: int | None) -> dict | None:
    """Pretrains one (method, seed) run and evaluates it; returns its result (cached in result.json),
    or None when another sweep process has claimed the run."""
    from maskgen import train as train_lib

    workdir = os.path.join(root, f"{method}-{seed}")
    done = os.path.join(workdir, "result.json")
    if not os.path.exists(done) and not _claim(workdir):
        return None
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    overrides = _eval_overrides(size, seed)
    if method != "mae":  # the baselines (random init, raw pixels) are read from the plain-MAE runs
        overrides += ["evals.probe.baselines=()", "evals.finetune.baselines=()"]
    if _family().needs_teacher(method):
        overrides.append(f"teacher.workdir={teacher}")
    config = _config(method, size, seed, overrides, steps)
    start = time.perf_counter()
    out = train_lib.train(config, workdir)
    result = {"method": method, "seed": seed, "seconds": time.perf_counter() - start,
              **{f"probe/{k}": v for k, v in out["evals"]["probe"].scalars.items()},
              **{f"finetune/{k}": v for k, v in out["evals"]["finetune"].scalars.items()}}
    with open(done, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{method}-{seed}: {json.dumps({k: round(v, 4) for k, v in result.items() if isinstance(v, float)})}",
          flush=True)
    return result


def _claim(workdir: str) -> bool:
    """Claims a run for this process (a `claimed_by` file holding its pid), so that several sweep
    processes can share one --workdir, e.g. one pinned to each core. A claim whose process has
    died (killed, preempted) is taken over: the run then resumes from its last checkpoint."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "claimed_by")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            with open(path) as f:
                owner = int(f.read().strip() or 0)
        except (OSError, ValueError):
            owner = 0
        if owner == os.getpid():
            return True
        if not owner or _alive(owner):  # no pid yet: its owner is between creating and writing it
            return False
        os.remove(path)  # a dead owner's claim
        return _claim(workdir)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def train_teacher(root: str, size: str, steps: int | None) -> tuple[str, float] | None:
    """Trains the teacher run once; returns (its workdir, its training seconds), or None when
    another sweep process has claimed it."""
    from maskgen import train as train_lib

    workdir = os.path.join(root, "teacher")
    done = os.path.join(workdir, "trained.json")
    if not os.path.exists(done) and not _claim(workdir):
        return None
    if os.path.exists(done):
        with open(done) as f:
            return workdir, json.load(f)["seconds"]
    config = _config("teacher", size, 0, ["evals.probe.every=-1", "evals.finetune.every=-1"], steps)
    start = time.perf_counter()
    train_lib.train(config, workdir)
    seconds = time.perf_counter() - start
    probe_teacher(root, size)
    with open(done, "w") as f:
        json.dump({"seconds": seconds}, f)
    return workdir, seconds


def probe_teacher(root: str, size: str) -> dict:
    """The teacher run's own quick-probe result (cached in teacher/probe.json): the reference that
    the teacher variants distil, so a reader can tell distillation from the variant's own gain."""
    from maskgen import runs

    workdir = os.path.join(root, "teacher")
    done = os.path.join(workdir, "probe.json")
    if not os.path.exists(done):
        config = _config("teacher", size, 0, _eval_overrides(size, 0) + ["evals.probe.baselines=()"])
        _, evals = runs.evaluate(config, workdir, names=("probe",))
        with open(done, "w") as f:
            json.dump({f"probe/{k}": v for k, v in evals["probe"].scalars.items()}, f, indent=1)
    with open(done) as f:
        return json.load(f)


def run_sweep(root: str, methods: list[str], seeds: list[int], size: str, steps: int | None,
              teacher_steps: int | None, poll_seconds: float = 20.0):
    """Trains the teacher (if a method needs one) and every (method, seed) run; returns
    ({method: [result per seed]}, teacher workdir, teacher seconds).

    Runs that another process sharing `root` has claimed are skipped and revisited, so each process
    keeps training whatever is left; runs that read the teacher wait until it is trained."""
    family = _family()
    teacher = None if any(family.needs_teacher(m) for m in methods) else ("", 0.0)
    pending = [(m, s) for m in methods for s in seeds]
    results = {}
    while pending or teacher is None:
        progressed = False
        if teacher is None:
            teacher = train_teacher(root, size, teacher_steps)
            progressed = teacher is not None
        for method, seed in list(pending):
            if teacher is None and family.needs_teacher(method):
                continue
            result = train_one(root, method, size, seed, teacher[0] if teacher else "", steps)
            if result is not None:
                results[method, seed] = result
                pending.remove((method, seed))
                progressed = True
        if not progressed:
            time.sleep(poll_seconds)
    return {m: [results[m, s] for s in seeds] for m in methods}, teacher[0], teacher[1]


def finished_results(root: str, methods: list[str], seeds: list[int]) -> dict[str, list[dict]]:
    """{method: [result of each seed whose run has finished under `root`]}, in seed order."""
    out = {}
    for method in methods:
        out[method] = []
        for seed in seeds:
            path = os.path.join(root, f"{method}-{seed}", "result.json")
            if os.path.exists(path):
                with open(path) as f:
                    out[method].append(json.load(f))
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def verdict(ours: list[float], base: list[float]) -> tuple[float, str]:
    """(difference of means, "holds" | "reversed" | "within noise") for a claim that `ours` > `base`."""
    diff = statistics.fmean(ours) - statistics.fmean(base)
    se = math.sqrt(sum(statistics.variance(v) / len(v) if len(v) > 1 else 0.0 for v in (ours, base)))
    if diff > 2 * se and diff > 0:
        return diff, "holds"
    if diff < -2 * se and diff < 0:
        return diff, "reversed"
    return diff, "within noise"


def _column(results: dict, method: str, key: str) -> list[float]:
    """One scalar of every finished seed of `method`."""
    return [r[key] for r in results[method]]


def _fmt(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}" if len(values) > 1 else f"{100 * m:.1f} (1 seed)"


def step_costs(methods: list[str], size: str, teacher: str, repeats: int) -> dict[str, float]:
    """Median train-step seconds of each method on one fixed batch, interleaved in this process."""
    import jax
    import numpy as np

    from maskgen import parallel
    from maskgen import train as train_lib
    from maskgen.data import data_options, make_source

    contenders = {}
    for method in methods:
        overrides = [f"teacher.workdir={teacher}"] if _family().needs_teacher(method) else []
        config = _config(method, size, 0, overrides)
        run = train_lib.setup(config)
        tx, schedule = train_lib.make_optimizer(config.optimizer, config.total_steps, *run.recipe.optimizer_groups())
        init_key, train_key = train_lib._keys(config.seed)
        jit_init, _, (state_sh, ema_sh) = train_lib._state_initializer(run, tx)
        source = make_source(config.data.name, "train", None, data_options(config.data))
        rows = [run.preprocess(source[i]) for i in range(config.batch_size)]
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        with run.context():
            state, ema = jit_init(init_key)
            step_fn = jax.jit(train_lib.make_train_step(run, tx, schedule, train_key),
                              in_shardings=(state_sh, ema_sh, None),
                              out_shardings=(state_sh, ema_sh, parallel.replicated(run.mesh)))
            global_batch = parallel.global_batch(batch, run.mesh, run.rules)
            compiled = common.compile_fn(step_fn, state, ema, global_batch)

        def one(compiled=compiled, state=state, ema=ema, global_batch=global_batch):
            return compiled.call(state, ema, global_batch)[2]["loss"]

        contenders[method] = one
    times = common.alternate(contenders, repeats=repeats, rounds=2)
    return {m: common.median(t) for m, t in times.items()}


def main(argv=None) -> dict:
    family = _family()
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(family.SWEEP_METHODS),
                   help=f"comma-separated variants (default: {','.join(family.SWEEP_METHODS)})")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps of every run (default: the config's)")
    p.add_argument("--teacher-steps", type=int, default=None, help="the teacher's pretraining steps (default: the config's)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory)")
    p.add_argument("--no-cost", action="store_true", help="skip the step-time table")
    p.add_argument("--cost-only", action="store_true",
                   help="only the step-time table (trains the teacher, for --teacher-steps, if --workdir has none)")
    p.add_argument("--table-only", action="store_true",
                   help="print the table from the runs already finished in --workdir; train nothing")
    args = p.parse_args(argv)
    if args.table_only and not args.workdir:
        p.error("--table-only reads the finished runs of --workdir; name it")
    smoke = args.size == "smoke"
    size = "tiny" if smoke else "small"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(family.METHODS))
    if unknown:
        p.error(f"--methods: unknown {unknown}; valid: {', '.join(family.METHODS)}")
    if "mae" not in methods:
        methods.insert(0, "mae")  # every row is read against plain MAE
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if smoke:
        seeds = seeds[:1]
    repeats = args.repeats or (2 if smoke else 10)
    root = args.workdir or tempfile.mkdtemp(prefix="mae_family_")
    os.makedirs(root, exist_ok=True)

    teacher_steps = 4 if smoke else args.teacher_steps
    if args.cost_only:
        teacher, teacher_seconds = "", 0.0
        if any(family.needs_teacher(m) for m in methods):
            while (trained := train_teacher(root, size, teacher_steps)) is None:
                time.sleep(20)
            teacher, teacher_seconds = trained
        timed = [m for m in methods if m != REFERENCE]
        return _cost_table(timed, step_costs(timed, size, teacher, repeats), teacher_seconds, family, {"id": "B22", "extra": {}}, args.json)
    if args.table_only:
        results = finished_results(root, methods, seeds)
        if not results["mae"]:
            p.error(f"--table-only: {root} has no finished plain-MAE run (mae-<seed>/result.json)")
        teacher_seconds = 0.0
    else:
        results, teacher, teacher_seconds = run_sweep(root, methods, seeds, size, 4 if smoke else args.steps,
                                                      teacher_steps)

    column = functools.partial(_column, results)
    mae_probe, mae_ft = column("mae", "probe/accuracy_model"), column("mae", "finetune/accuracy_model")
    rows = [
        ["raw pixels", _fmt(column("mae", "probe/accuracy_pixels")), "", "", "", "", ""],
        ["random encoder", _fmt(column("mae", "probe/accuracy_random_init")),
         _fmt(column("mae", "finetune/accuracy_random_init")), "", "", "", ""],
        ["plain MAE", _fmt(mae_probe), _fmt(mae_ft), "", "", "", ""],
    ]
    teacher_probe = os.path.join(root, "teacher", "probe.json")
    if os.path.exists(teacher_probe):  # what the teacher variants distil (one run, larger, longer)
        with open(teacher_probe) as f:
            rows.append([family.LABELS["teacher"], _fmt([json.load(f)["probe/accuracy_model"]]), "", "", "", "", ""])
    reference = REFERENCE
    if results.get(reference):
        long_probe, long_ft = column(reference, "probe/accuracy_model"), column(reference, "finetune/accuracy_model")
        rows.append([family.LABELS[reference], _fmt(long_probe), _fmt(long_ft),
                     f"{100 * verdict(long_probe, mae_probe)[0]:+.1f} / {100 * verdict(long_ft, mae_ft)[0]:+.1f}",
                     "", "", ""])
    verdicts = {}
    for method in methods:
        if method in ("mae", reference) or not results[method]:
            continue
        dp, vp = verdict(column(method, "probe/accuracy_model"), mae_probe)
        df, vf = verdict(column(method, "finetune/accuracy_model"), mae_ft)
        if len(results[method]) < len(seeds) or len(results["mae"]) < len(seeds):  # --table-only, mid-sweep
            vp = vf = f"none yet ({len(results[method])} of {len(seeds)} seeds)"
        verdicts[method] = {"probe": vp, "finetune": vf, "probe_diff": dp, "finetune_diff": df}
        rows.append([family.LABELS[method], _fmt(column(method, "probe/accuracy_model")),
                     _fmt(column(method, "finetune/accuracy_model")), f"{100 * dp:+.1f} / {100 * df:+.1f}",
                     family.CLAIMS[method], vp, vf])
    # The gate: plain MAE above both probe baselines by more than 3 std across seeds.
    mae_mean, mae_std = mean_std(mae_probe)
    gaps = {}
    for name in ("pixels", "random_init"):
        base_mean, base_std = mean_std(column("mae", f"probe/accuracy_{name}"))
        spread = max(mae_std, base_std, 1e-9)
        gaps[name] = (mae_mean - base_mean) / spread
    headline = (f"plain MAE probes {100 * mae_mean:.1f}% vs raw pixels "
                f"{100 * mean_std(column('mae', 'probe/accuracy_pixels'))[0]:.1f}% "
                f"({gaps['pixels']:.1f} std) and a random encoder "
                f"{100 * mean_std(column('mae', 'probe/accuracy_random_init'))[0]:.1f}% ({gaps['random_init']:.1f} std); "
                + "; ".join(f"{family.LABELS[m]} {v['probe']}/{v['finetune']}" for m, v in verdicts.items()))
    header = ["variant", "probe % (mean ± std)", "fine-tune % (mean ± std)", "Δ vs MAE (probe / ft)",
              "paper's direction", "verdict (probe)", "verdict (fine-tune)"]
    extra = {"seeds": seeds, "verdicts": verdicts, "gaps_in_std": gaps, "teacher_seconds": teacher_seconds,
             "runs": results}
    result = common.report("B22", TITLE, header, rows, headline, claim="each variant beats plain MAE (its paper)",
                           holds=min(gaps.values()) > 3, extra=extra, json_path=None)
    matched = compute_matched(results, family, reference, len(seeds))
    if matched:
        result["extra"]["compute_matched"] = matched
    if args.no_cost or args.table_only:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        return result
    timed = [m for m in methods if m != REFERENCE]
    return _cost_table(timed, step_costs(timed, size, teacher, repeats), teacher_seconds, family, result,
                       args.json)


def compute_matched(results: dict, family, reference: str, num_seeds: int) -> dict:
    """The teacher variants against plain MAE trained as long as a whole teacher pipeline costs
    (`reference`): prints that second table and returns {method: {probe, finetune, *_diff}}."""
    column = functools.partial(_column, results)
    if not results.get(reference):
        return {}
    out = {}
    print(f"\n| teacher variant | Δ vs {family.LABELS[reference]} (probe / ft) | verdict (probe) | verdict (fine-tune) |"
          "\n|---|---|---|---|")
    for method in results:
        if not family.needs_teacher(method) or not results[method]:
            continue
        dp, vp = verdict(column(method, "probe/accuracy_model"), column(reference, "probe/accuracy_model"))
        df, vf = verdict(column(method, "finetune/accuracy_model"), column(reference, "finetune/accuracy_model"))
        if min(len(results[method]), len(results[reference])) < num_seeds:
            vp = vf = "none yet"
        out[method] = {"probe": vp, "finetune": vf, "probe_diff": dp, "finetune_diff": df}
        print(f"| {family.LABELS[method]} | {100 * dp:+.1f} / {100 * df:+.1f} | {vp} | {vf} |")
    return out


def _cost_table(methods, costs, teacher_seconds, family, result, json_path):
    print(f"\n{common.machine_line()}\n| variant | train step (median) | vs plain MAE |\n|---|---|---|")
    for m in methods:
        print(f"| {family.LABELS[m]} | {common.fmt_seconds(costs[m])} | {costs[m] / costs['mae']:.2f}x |")
    if teacher_seconds:
        print(f"(the teacher run, paid once: {teacher_seconds:.0f} s of training)")
    result["extra"]["step_seconds"] = costs
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
