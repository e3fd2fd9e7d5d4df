"""Where the B3 train step's time goes on XLA:CPU, and which matmul library is fastest on its shapes.

Two tables, to reproduce the profile behind maskgen's default XLA:CPU flag (maskgen/__init__.py:
`xla_cpu_experimental_ynn_fusion_type=-individual_dot`, i.e. single dots on XLA's Eigen kernel
instead of YNNPACK):

1. Profile. The B3 step (benchmarks/train_step_vs_pytorch.py: maskgen Transformer + linear head,
   masked MSE, AdamW; jitted, donated, compiled ahead of time) runs in a child process with
   `--xla_cpu_enable_xprof_traceme=true` under `jax.profiler.trace`, once per XLA configuration
   (maskgen's default flags, and jaxlib's defaults where YNNPACK takes every dot). The trace is
   read back with `jax.profiler.ProfileData`; each event named after an instruction of the
   optimized HLO is one op run, and its time runs from its start to its completion marker
   (`end: <op>`, which comes after the event for ops that finish asynchronously, such as Eigen
   dots on the intra-op thread pool). Ops are sorted into categories from the HLO: library
   dots (YNNPACK/oneDNN `__*_fusion` holding a dot; Eigen = a plain `dot` thunk), XLA's
   elementwise loop fusions, transpose/copy fusions (any non-library fusion that moves data
   between layouts, elementwise math included), YNNPACK reductions, XLA loop reductions, other. "ms per step" sums op times over the threads that ran them: ops that
   overlap (XLA runs independent ops concurrently, and an asynchronous dot's span includes time
   the cores spent on other ops) each count in full, so the total can exceed the wall time and is
   comparable with, not a split of, the CPU time per step. Wall and CPU time per step are
   printed with the profiler off and on (its overhead).
2. Dot kernels. A jitted float32 `a @ b` on the model's matmul shapes (M x K x N: 4096x384x1536
   and 4096x1536x384 are the MLP's fc1/fc2 with 16x256 tokens, 2048^3 a square reference) under
   each XLA:CPU dot library, each in its own child process started with that library's XLA_FLAGS
   and MASKGEN_XLA_CPU_FLAGS=0 (so maskgen's default flag does not mix in), next to numpy's BLAS
   and torch.matmul (if torch imports) in this process. Contenders alternate round by round;
   GFLOP/s (2 M K N per call) of the median call. The "lowered to" column is read back from each
   child's optimized HLO, so it shows which library really ran the dot.

    python -m benchmarks.profile_cpu_train_step                  # about 1 minute on 2 cores
    python -m benchmarks.profile_cpu_train_step --size smoke     # tiny shapes, checks it runs (< 40 s)
    python -m benchmarks.profile_cpu_train_step --configs maskgen --rounds 5

If the trace of this jax version cannot be read back (no `jax.profiler.ProfileData`, no trace
file, or no event named after an HLO instruction), the script stops with an error saying so.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import maskgen
from benchmarks import common
from benchmarks.train_step_vs_pytorch import SHAPES, jax_contender, make_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACEME_FLAG = "--xla_cpu_enable_xprof_traceme=true"
# (M, K, N): a[M, K] @ b[K, N]
DOT_SHAPES = {"default": [(4096, 384, 1536), (4096, 1536, 384), (2048, 2048, 2048)],
              "smoke": [(256, 64, 256), (256, 256, 64), (128, 128, 128)]}
DOT_VARIANTS = {  # name: XLA_FLAGS of its child process
    "XLA, YNNPACK dots (jaxlib default)": [],
    "XLA, Eigen dots": ["--xla_cpu_experimental_ynn_fusion_type=-individual_dot"],
    "XLA, oneDNN dots": ["--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_fusion_type=individual_dot",
                         "--xla_cpu_experimental_ynn_fusion_type=-individual_dot"],
}
CATEGORIES = ["YNNPACK dots", "oneDNN dots", "XNNPACK dots", "Eigen dots (XLA dot thunks)", "XLA-emitted dot fusions",
              "elementwise loop fusions", "transpose/copy fusions", "YNNPACK reductions", "XLA loop reductions",
              "YNNPACK other", "other"]
NOT_SUMMED = "control flow (holds other ops; not summed)"
MARK = "@@profile_cpu_train_step@@ "  # prefix of the one stdout line a worker answers with
# Pause before each contender's turn in a round: the previous contender's idle threads (OpenBLAS,
# OpenMP, Eigen) spin-wait for up to ~0.3 s and, on 2 cores, slowed torch.matmul 100x when skipped.
SETTLE_S = 0.5


class ProfileParseError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# Optimized HLO: instruction name -> (category, shape)

_INSTR = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s([a-z][\w\-]*)\((.*)$")
_LIBRARY_FUSION = {"__ynn_fusion": "YNNPACK", "__onednn_fusion": "oneDNN", "__xnn_fusion": "XNNPACK"}


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Every instruction of an HLO module (text) with its category and result shape."""
    bodies: dict[str, set[str]] = {}
    instrs = []
    current = None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            words = line.split()
            name = words[1] if words[0] == "ENTRY" and len(words) > 1 else words[0]
            current = name.lstrip("%")
            bodies[current] = set()
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            name, shape, op, rest = m.groups()
            bodies[current].add(op)
            instrs.append((name, shape, op, rest))
    out = {}
    for name, shape, op, rest in instrs:
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        body = bodies.get(called.group(1), set()) if called else set()
        out[name] = (_category(op, rest, body), re.sub(r"\{[^{}]*\}", "", shape))  # shape without layout
    return out


def _category(op: str, rest: str, body: set[str]) -> str:
    if op == "fusion":
        kind = re.search(r'"kind"\s*:\s*"(__\w+?_fusion)"', rest)
        if kind:
            lib = _LIBRARY_FUSION.get(kind.group(1), kind.group(1))
            if body & {"dot", "convolution"}:
                return f"{lib} dots"
            if body & {"reduce", "reduce-window"}:
                return f"{lib} reductions" if lib == "YNNPACK" else "other"
            return f"{lib} other" if lib == "YNNPACK" else "other"
        if body & {"dot", "convolution"}:
            return "XLA-emitted dot fusions"
        if body & {"reduce", "reduce-window"}:
            return "XLA loop reductions"
        if body & {"transpose", "copy"}:
            return "transpose/copy fusions"
        return "elementwise loop fusions"
    if op == "dot":
        return "Eigen dots (XLA dot thunks)"
    if op in ("copy", "transpose"):
        return "transpose/copy fusions"
    if op == "custom-call" and "onednn" in rest.lower():
        return "oneDNN dots" if "matmul" in rest.lower() else "other"
    if op in ("while", "conditional", "call", "async-start", "async-done"):
        return NOT_SUMMED
    return "other"


# ----------------------------------------------------------------------------------------------
# Trace: op name -> list of (start_ns, completion_ns)

def read_trace(trace_dir: str, known: set[str]) -> dict[str, list[tuple[int, int]]]:
    """Op runs from the profiler's XSpace: each HLO-named event paired with its `end: name` marker."""
    try:
        profile_data = jax.profiler.ProfileData
    except AttributeError as err:
        raise ProfileParseError(f"jax {jax.__version__} has no jax.profiler.ProfileData to read the trace with; "
                                "this script needs a jax that has it (0.4.36 or later)") from err
    files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise ProfileParseError(f"jax.profiler.trace wrote no *.xplane.pb under {trace_dir} (jax {jax.__version__})")
    try:
        data = profile_data.from_file(max(files, key=os.path.getmtime))
        starts, ends = collections.defaultdict(list), collections.defaultdict(list)
        for plane in data.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                for ev in line.events:
                    name = ev.name
                    if name in known:
                        starts[name].append((ev.start_ns, ev.end_ns))
                    elif name.startswith("end: ") and name[5:] in known:
                        ends[name[5:]].append(ev.start_ns)
    except ProfileParseError:
        raise
    except Exception as err:  # noqa: BLE001 (any change of the ProfileData API lands here)
        raise ProfileParseError(f"could not read the trace with jax.profiler.ProfileData (jax {jax.__version__}): "
                                f"{type(err).__name__}: {err}") from err
    if not starts:
        raise ProfileParseError(
            f"the trace holds no event named after an instruction of the optimized HLO (jax {jax.__version__}, "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}): this XLA:CPU names or records its op events "
            "differently from jax 0.10.2, which this script was written against")
    runs = {}
    for name, evs in starts.items():
        evs.sort()
        marks = sorted(ends.get(name, ()))
        j, spans = 0, []
        for start, end in evs:  # one op never overlaps itself: pair each start with the next marker
            while j < len(marks) and marks[j] < start:
                j += 1
            done = end
            if j < len(marks):
                done = max(end, marks[j])
                j += 1
            spans.append((start, done))
        runs[name] = spans
    return runs


def categorize(runs, ops, steps: int) -> dict[str, dict]:
    """{category: {"ms": per step, "ops": op runs per step, "top": [(name, shape, ms per step)]}}."""
    per_op = collections.Counter({name: sum(e - s for s, e in spans) / 1e6 / steps for name, spans in runs.items()})
    out: dict[str, dict] = {}
    for name, ms in per_op.items():
        category, shape = ops[name]
        entry = out.setdefault(category, {"ms": 0.0, "ops": 0.0, "top": []})
        entry["ms"] += ms
        entry["ops"] += len(runs[name]) / steps
        entry["top"].append((name, shape, ms))
    for entry in out.values():
        entry["top"] = sorted(entry["top"], key=lambda t: -t[2])[:3]
    return out


# ----------------------------------------------------------------------------------------------
# Workers (child processes)

def profile_worker(args) -> None:
    """Child: compiles the B3 step, times it without and with the profiler, writes the categories."""
    shape = SHAPES[args.size]
    depth, width, heads, mlp_ratio, tokens, batch = shape
    compiled, run = jax_contender(shape, make_data(batch, tokens, width))
    steps, warmup = args.steps, 1 if args.size == "smoke" else 2
    for _ in range(warmup):
        jax.block_until_ready(run())

    def timed(n):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            jax.block_until_ready(run())
        return (time.perf_counter() - wall) / n * 1e3, (time.process_time() - cpu) / n * 1e3

    wall_off, cpu_off = timed(steps)
    ops = hlo_ops(compiled.call.as_text())
    with tempfile.TemporaryDirectory(prefix="maskgen_prof_") as trace_dir:
        with jax.profiler.trace(trace_dir):
            wall_on, cpu_on = timed(steps)
        try:
            runs = read_trace(trace_dir, set(ops))
        except ProfileParseError as err:
            print(f"{MARK}{json.dumps({'error': str(err)})}", flush=True)
            raise SystemExit(3) from err
    result = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "steps": steps, "gflop": compiled.flops / 1e9,
              "compile_s": compiled.compile_s, "wall_ms": wall_off, "cpu_ms": cpu_off, "wall_ms_profiled": wall_on,
              "cpu_ms_profiled": cpu_on, "categories": categorize(runs, ops, steps),
              "shape": f"{depth} layers, width {width}, {heads} heads, {tokens} tokens, batch {batch}"}
    print(f"{MARK}{json.dumps(result)}", flush=True)


def dot_library(hlo_text: str) -> str:
    for marker, lib in _LIBRARY_FUSION.items():
        if marker in hlo_text:
            return lib
    if "onednn" in hlo_text.lower():
        return "oneDNN"
    return "Eigen" if re.search(r"\sdot\(", hlo_text) else "?"


def dots_worker(args) -> None:
    """Child: compiles `a @ b` per shape, then answers each `run N` line on stdin with N timed calls per shape."""
    rng = np.random.default_rng(0)
    calls, libs = [], []
    for m, k, n in DOT_SHAPES[args.size]:
        a = jnp.asarray(rng.standard_normal((m, k), dtype=np.float32))
        b = jnp.asarray(rng.standard_normal((k, n), dtype=np.float32))
        compiled = jax.jit(jnp.matmul).lower(a, b).compile()
        libs.append(dot_library(compiled.as_text()))
        calls.append(lambda c=compiled, a=a, b=b: c(a, b))
    print(f"{MARK}{json.dumps({'libs': libs})}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "run":
            break
        times = []
        for call in calls:
            jax.block_until_ready(call())
            times.append([common.time_once(call) for _ in range(int(words[1]))])
        print(f"{MARK}{json.dumps({'times': times})}", flush=True)


# ----------------------------------------------------------------------------------------------
# Parent

def _answer(proc: subprocess.Popen) -> dict:
    for line in proc.stdout:
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    proc.wait()
    raise RuntimeError(f"worker exited ({proc.returncode}) without an answer; its stderr is above")


def _worker(kind: str, size: str, xla_flags: list[str], steps: int = 0) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=" ".join(xla_flags), MASKGEN_XLA_CPU_FLAGS="0")
    cmd = [sys.executable, "-m", "benchmarks.profile_cpu_train_step", "--size", size, "--worker", kind,
           "--steps", str(steps)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _strip(flags: str, names) -> list[str]:
    return [f for f in flags.split() if not any(f.startswith(f"--{n}=") or f == f"--{n}" for n in names)]


def profile_configs(selected: list[str]) -> dict[str, list[str]]:
    """{label: XLA_FLAGS} of the profiled configurations, on top of the user's other XLA_FLAGS."""
    default_flags = maskgen.set_cpu_xla_flags({})  # what maskgen adds on this jaxlib ([] if nothing)
    user = _strip(os.environ.get("XLA_FLAGS", ""), [*maskgen.CPU_XLA_FLAGS, TRACEME_FLAG[2:].split("=")[0]])
    configs = {}
    if "maskgen" in selected:
        configs["maskgen default" + (" (Eigen dots)" if default_flags else "")] = [*user, *default_flags]
    if "jaxlib" in selected and (default_flags or "maskgen" not in selected):
        configs["jaxlib default (YNNPACK dots)"] = user
    return configs


def _ms(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.3f}"


def profile_table(label: str, res: dict) -> str:
    cats = res["categories"]
    summed = sum(c["ms"] for name, c in cats.items() if name != NOT_SUMMED)
    lines = [f"### XLA:CPU profile of the B3 train step, {label}",
             f"XLA_FLAGS={res['xla_flags']!r}; {res['shape']}; {res['gflop']:.1f} GFLOP/step; "
             f"{res['steps']} profiled steps after warm-up",
             f"wall {_ms(res['wall_ms'])} ms/step, CPU time {_ms(res['cpu_ms'])} ms/step (profiler off); "
             f"wall {_ms(res['wall_ms_profiled'])} ms/step, CPU time {_ms(res['cpu_ms_profiled'])} ms/step "
             f"(profiler on); ops sum to {_ms(summed)} ms/step; compile {res['compile_s']:.1f} s",
             "| category | ms per step (summed over threads) | % of op time | ops per step | top ops (name shape: ms) |",
             "|---|---|---|---|---|"]
    order = [c for c in CATEGORIES if c in cats] + sorted(c for c in cats if c not in CATEGORIES)
    for name in order:
        c = cats[name]
        top = ", ".join(f"{n} {s}: {_ms(ms)}" for n, s, ms in c["top"])
        share = "-" if name == NOT_SUMMED else f"{100 * c['ms'] / summed:.0f}%"
        lines.append(f"| {name} | {_ms(c['ms'])} | {share} | {c['ops']:.0f} | {top} |")
    lines.append(f"| total | {_ms(summed)} | 100% | {sum(c['ops'] for c in cats.values()):.0f} | |")
    return "\n".join(lines)


def run_profiles(size: str, configs: dict[str, list[str]], steps: int) -> dict[str, dict]:
    out = {}
    for label, flags in configs.items():
        proc = _worker("profile", size, [*flags, TRACEME_FLAG], steps)
        proc.stdin.close()
        try:
            res = _answer(proc)
        finally:
            proc.wait()
        if "error" in res:
            raise SystemExit(f"profile_cpu_train_step: cannot read the XLA:CPU profile: {res['error']}")
        if proc.returncode != 0:
            raise SystemExit(f"profile_cpu_train_step: the profile worker for {label} exited with {proc.returncode}")
        out[label] = res
        print(profile_table(label, res) + "\n", flush=True)
    return out


def peer_dots(size: str):
    """{name: (callables per shape, library description)} for numpy and torch in this process."""
    rng = np.random.default_rng(0)
    arrays = [(rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32))
              for m, k, n in DOT_SHAPES[size]]
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]
    except Exception:  # noqa: BLE001 (numpy's config layout varies by version)
        blas = "BLAS"
    peers = {f"numpy {np.__version__}": ([lambda a=a, b=b: a @ b for a, b in arrays], blas)}
    try:
        import torch  # noqa: PLC0415 (optional peer)
    except ImportError:
        return peers
    torch.set_num_threads(common.machine()["cores"])
    tensors = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in arrays]
    peers[f"torch {torch.__version__} matmul"] = ([lambda a=a, b=b: a @ b for a, b in tensors],
                                                  f"{torch.get_num_threads()} threads")
    return peers


def run_dots(size: str, rounds: int, repeats: int):
    """{contender: {"flags", "libs", "times": per shape [seconds]}}; contenders alternate each round."""
    workers = {name: _worker("dots", size, flags) for name, flags in DOT_VARIANTS.items()}
    results = {}
    for name, proc in workers.items():
        try:
            results[name] = {"flags": DOT_VARIANTS[name], "libs": _answer(proc)["libs"],
                             "times": [[] for _ in DOT_SHAPES[size]]}
        except RuntimeError as err:
            results[name] = {"flags": DOT_VARIANTS[name], "error": str(err)}
    peers = peer_dots(size)
    for name, (_, lib) in peers.items():
        results[name] = {"flags": None, "libs": [lib] * len(DOT_SHAPES[size]), "times": [[] for _ in DOT_SHAPES[size]]}
    try:
        for _ in range(rounds):
            for name, proc in workers.items():
                if "error" in results[name]:
                    continue
                time.sleep(SETTLE_S)
                proc.stdin.write(f"run {repeats}\n")
                proc.stdin.flush()
                for acc, times in zip(results[name]["times"], _answer(proc)["times"]):
                    acc.extend(times)
            for name, (calls, _) in peers.items():
                time.sleep(SETTLE_S)
                for acc, call in zip(results[name]["times"], calls):
                    call()
                    acc.extend(common.time_once(call) for _ in range(repeats))
    finally:
        for proc in workers.values():
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
            proc.wait()
    return results


def main():
    started = time.perf_counter()
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds of the dot-kernel table")
    p.add_argument("--steps", type=int, default=None, help="profiled train steps (after warm-up)")
    p.add_argument("--configs", default="maskgen,jaxlib",
                   help="profiled XLA configs, comma-separated: maskgen (its default flags), jaxlib (jaxlib defaults)")
    p.add_argument("--worker", choices=("profile", "dots"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    smoke = args.size == "smoke"
    args.steps = args.steps or (2 if smoke else 3)
    if args.worker == "profile":
        return profile_worker(args)
    if args.worker == "dots":
        return dots_worker(args)

    info = common.machine()
    print(common.machine_line(info), flush=True)
    configs = profile_configs([c.strip() for c in args.configs.split(",") if c.strip()])
    profiles = run_profiles(args.size, configs, args.steps)
    profile_s = time.perf_counter() - started

    rounds, repeats = args.rounds or (2 if smoke else 3), args.repeats or (2 if smoke else 5)
    dots = run_dots(args.size, rounds, repeats)
    default_flags = maskgen.set_cpu_xla_flags({})
    shapes = DOT_SHAPES[args.size]
    header = ["contender", "XLA_FLAGS (child)", "lowered to", *(f"{m}x{k}x{n} GFLOP/s" for m, k, n in shapes),
              "geomean GFLOP/s"]
    rows, geomeans = [], {}
    for name, r in dots.items():
        label = name + (" = maskgen default" if r["flags"] is not None and r["flags"] == default_flags else "")
        flags = "-" if r["flags"] is None else (" ".join(r["flags"]) or "(none)")
        if "error" in r:
            rows.append([label, flags, "failed", *("-" for _ in shapes), "-"])
            continue
        rates = [2 * m * k * n / statistics.median(t) / 1e9 for (m, k, n), t in zip(shapes, r["times"])]
        geomeans[name] = math.exp(statistics.mean(math.log(x) for x in rates))
        rows.append([label, flags, ", ".join(sorted(set(r["libs"]))), *(f"{x:.0f}" for x in rates),
                     f"{geomeans[name]:.0f}"])
    xla = {n: g for n, g in geomeans.items() if n in DOT_VARIANTS}
    best = max(xla, key=xla.get) if xla else None
    first = next(iter(profiles.values()), None)
    dot_ms = sum(c["ms"] for n, c in first["categories"].items() if "dot" in n) if first else 0.0
    op_ms = sum(c["ms"] for n, c in first["categories"].items() if n != NOT_SUMMED) if first else 0.0
    headline = (f"fastest XLA:CPU dot library on the model's shapes: {best} (geomean {xla[best]:.0f} GFLOP/s; "
                + ", ".join(f"{n.split(', ')[-1]} {g:.0f}" for n, g in geomeans.items() if n != best) + ")"
                if best else "no XLA dot variant ran")
    if first:
        headline += f"; dots are {100 * dot_ms / op_ms:.0f}% of the step's op time ({next(iter(profiles))})"
    print(f"dot kernels: float32 a[M,K] @ b[K,N], {len(next(iter(dots.values()), {}).get('times', [[]])[0])} timed "
          f"calls each over {rounds} alternating rounds; GFLOP/s of the median call; XLA variants each in a child "
          f"process with MASKGEN_XLA_CPU_FLAGS=0; maskgen's default flags here: {default_flags or 'none'}")
    common.report("B3-profile", "XLA:CPU dot kernels on the B3 shapes (profile tables above)", header, rows,
                  headline, extra={"profiles": profiles, "dots": dots, "maskgen_default_flags": default_flags},
                  json_path=args.json, info=info)
    print(f"profile_cpu_train_step: profiles {profile_s:.0f} s, total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
