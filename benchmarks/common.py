"""Shared pieces of the benchmark scripts: timing, the machine line, FLOP/byte counts, results.

Every benchmark script in this folder:
  * takes `--size smoke|default` (smoke: the smallest shapes, for `tests/test_benchmarks.py`),
    `--repeats N`, and `--json PATH` (where `benchmarks.run` collects the result);
  * times jitted functions after ahead-of-time compilation, so compile time is reported on its
    own and never mixed into a step time; every timed call ends in `block_until_ready`;
  * alternates its contenders round by round, because these shared machines drift, and reports
    medians and the ratio measured in the same run;
  * prints a Markdown table and one headline line with the claim it tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The CPU model, core count, accelerator and library versions: printed with every result."""
    info = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind} x{jax.device_count()}",
        "jax": jax.__version__,
    }
    try:
        import torch  # noqa: PLC0415 (optional peer)

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    info = info or machine()
    parts = [f"{info['cpu']}, {info['cores']} cores", info["device"], f"jax {info['jax']}"]
    if "torch" in info:
        parts.append(f"torch {info['torch']}")
    return "machine: " + ", ".join(parts)


@dataclasses.dataclass
class Compiled:
    """A jitted function compiled ahead of time for fixed arguments, with its compile time and costs."""

    call: Callable
    compile_s: float
    flops: float
    bytes_accessed: float


def compile_fn(fn: Callable, *args, **kwargs) -> Compiled:
    """`jax.jit(fn).lower(*args).compile()`, timed; FLOPs and bytes from XLA's cost analysis.

    XLA counts a multiply-add as 2 FLOPs (checked on a plain matmul in benchmarks/scaling_model.py).
    """
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    start = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
        cost = cost[0] if cost else {}
    cost = cost or {}
    return Compiled(compiled, compile_s, float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)))


def square_matmul(n: int) -> tuple[Callable[[], Any], float]:
    """A jitted float32 [n, n] @ [n, n], ready to time, and its FLOPs (2 n^3): the machine's peak."""
    import jax.numpy as jnp  # noqa: PLC0415

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    compiled = compile_fn(jnp.matmul, a, b)
    return (lambda: compiled.call(a, b)), 2.0 * n**3


def time_once(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def alternate(contenders: dict[str, Callable[[], Any]], *, repeats: int, rounds: int = 2,
              warmup: int = 1) -> dict[str, list[float]]:
    """Times each contender `repeats` times per round, alternating contenders between rounds.

    Each contender is a no-argument callable whose result is blocked on (JAX arrays) or which
    blocks itself (torch). Returns every timed call, per contender, after `warmup` untimed calls.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            time_once(fn)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].extend(time_once(fn) for _ in range(repeats))
    return times


def median(values) -> float:
    return statistics.median(values)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--size", choices=("smoke", "default"), default="default",
                   help="smoke: the smallest shapes, only to check the script runs")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per contender per round")
    p.add_argument("--json", default=None, help="also write the result here (benchmarks.run reads it)")
    return p


def positive_ints(p: argparse.ArgumentParser, flag: str, text: str) -> tuple[int, ...]:
    """A comma-separated list of integers >= 1 from `flag` (e.g. --steps "4,8,16"), or a parser error naming it."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        p.error(f"{flag} takes comma-separated integers; got {text!r}")
    if not values or min(values) < 1:
        p.error(f"{flag} needs integers >= 1; got {text!r}")
    return values


def fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def report(bench_id: str, title: str, header: list[str], rows: list[list[Any]], headline: str, *,
           ratio: float | None = None, claim: str = "", holds: bool | None = None, extra: dict | None = None,
           json_path: str | None = None, info: dict | None = None) -> dict:
    """Prints the table and headline; writes the JSON result that `benchmarks.run` collects."""
    info = info or machine()
    print(f"## {bench_id}: {title}")
    print(machine_line(info))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    verdict = "" if holds is None else (" -> holds" if holds else " -> does NOT hold")
    print(f"{bench_id}: {headline}{verdict}")
    result = {"id": bench_id, "title": title, "header": header, "rows": [[str(c) for c in r] for r in rows],
              "headline": headline, "ratio": ratio, "claim": claim, "holds": holds, "machine": info,
              "extra": extra or {}}
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    return result
