"""B22's sweep bookkeeping (benchmarks/mae_family.py): the verdict rule, and several sweep
processes sharing one --workdir through claim files. Training is replaced by a stub that records
the order of the runs; nothing here trains a model."""

import json
import os
import subprocess
import sys
import types

import pytest

from benchmarks import mae_family


def test_verdict_needs_two_standard_errors_either_way():
    base = [0.80, 0.79, 0.81]
    assert mae_family.verdict([0.85, 0.86, 0.84], base)[1] == "holds"
    assert mae_family.verdict([0.70, 0.71, 0.69], base)[1] == "reversed"
    diff, verdict = mae_family.verdict([0.82, 0.77, 0.84], base)  # +0.01, se ~0.02
    assert verdict == "within noise" and diff == pytest.approx(0.01)


def test_claim_is_exclusive_per_live_process_and_taken_over_from_a_dead_one(tmp_path):
    run = str(tmp_path / "mae-0")
    assert mae_family._claim(run) and mae_family._claim(run)  # this process's own claim, twice
    claim = os.path.join(run, "claimed_by")
    with open(claim, "w") as f:
        f.write(str(os.getppid()))  # a live process (pytest's parent) holds it
    assert not mae_family._claim(run)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    with open(claim, "w") as f:
        f.write(str(finished.pid))  # a killed sweep's claim
    assert mae_family._claim(run)
    with open(claim) as f:
        assert int(f.read()) == os.getpid()


def test_sweep_skips_runs_another_process_claimed_and_reads_their_results(tmp_path, monkeypatch):
    import maskgen.train

    root = str(tmp_path)
    other = os.path.join(root, "mae-1")
    os.makedirs(other)
    with open(os.path.join(other, "claimed_by"), "w") as f:
        f.write(str(os.getppid()))  # another live sweep is training mae-1
    trained = []

    def fake_train(config, workdir):
        name = os.path.basename(workdir)
        trained.append(name)
        if name == "dmae-1":  # meanwhile the other sweep finishes mae-1
            with open(os.path.join(other, "result.json"), "w") as f:
                json.dump({"method": "mae", "seed": 1, "probe/accuracy_model": 0.5}, f)
        if name.startswith("dmae"):
            assert config.teacher.workdir == os.path.join(root, "teacher")
        scalars = {"accuracy_model": 0.25}
        return {"evals": {"probe": types.SimpleNamespace(scalars=scalars),
                          "finetune": types.SimpleNamespace(scalars=scalars)}}

    monkeypatch.setattr(maskgen.train, "train", fake_train)
    monkeypatch.setattr(mae_family, "probe_teacher", lambda root, size: trained.append("probe teacher"))
    results, teacher, _ = mae_family.run_sweep(root, ["mae", "dmae"], [0, 1], "tiny", steps=2, teacher_steps=2,
                                               poll_seconds=0.01)
    assert trained == ["teacher", "probe teacher", "mae-0", "dmae-0", "dmae-1"]  # mae-1 was left to its owner
    assert teacher == os.path.join(root, "teacher")
    assert [r["seed"] for r in results["mae"]] == [0, 1] and results["mae"][1]["probe/accuracy_model"] == 0.5
    assert results["dmae"][0]["probe/accuracy_model"] == 0.25
    # A second sweep over the same workdir reuses every result and trains nothing.
    trained.clear()
    again, _, _ = mae_family.run_sweep(root, ["mae", "dmae"], [0, 1], "tiny", steps=2, teacher_steps=2)
    assert trained == [] and again == results


def _finished(root, method, seed, probe, finetune, **baselines):
    """A run's result.json, as a finished sweep run leaves it."""
    os.makedirs(root / f"{method}-{seed}")
    result = {"method": method, "seed": seed, "probe/accuracy_model": probe, "finetune/accuracy_model": finetune,
              **baselines}
    (root / f"{method}-{seed}" / "result.json").write_text(json.dumps(result))


def test_table_only_reads_finished_runs_and_gives_no_verdict_before_every_seed(tmp_path, capsys):
    for seed, probe in enumerate([0.80, 0.79, 0.81]):
        _finished(tmp_path, "mae", seed, probe, 0.95, **{"probe/accuracy_pixels": 0.4, "probe/accuracy_random_init": 0.7,
                                              "finetune/accuracy_random_init": 0.9})
    _finished(tmp_path, "dmae", 0, 0.85, 0.96)
    result = mae_family.main(["--workdir", str(tmp_path), "--table-only", "--methods", "dmae,hpm"])
    rows = {row[0]: row for row in result["rows"]}
    assert rows["plain MAE"][1] == "80.0 ± 1.0" and rows["DMAE"][1] == "85.0 (1 seed)"
    assert rows["DMAE"][5] == "none yet (1 of 3 seeds)" and "HPM" not in rows  # no run of it has finished
    assert not any(tmp_path.glob("teacher*")) and "| DMAE |" in capsys.readouterr().out  # nothing was trained


def test_compute_matched_row_reads_teacher_variants_against_long_mae(tmp_path, capsys):
    for seed in range(3):
        _finished(tmp_path, "mae", seed, 0.80 + 0.01 * seed, 0.95, **{"probe/accuracy_pixels": 0.4,
                                                           "probe/accuracy_random_init": 0.7,
                                                           "finetune/accuracy_random_init": 0.9})
        _finished(tmp_path, "dmae", seed, 0.85 + 0.01 * seed, 0.97 + 0.001 * seed)
        _finished(tmp_path, "mae_long", seed, 0.90 + 0.01 * seed, 0.97 - 0.001 * seed)
    result = mae_family.main(["--workdir", str(tmp_path), "--table-only", "--methods", "dmae,mae_long"])
    rows = {row[0]: row for row in result["rows"]}
    long_label = "plain MAE, 7x steps (compute-matched)"
    assert rows[long_label][1] == "91.0 ± 1.0" and rows[long_label][3] == "+10.0 / +1.9"
    assert result["extra"]["verdicts"]["dmae"]["probe"] == "holds"  # against plain MAE at equal steps...
    assert "mae_long" not in result["extra"]["verdicts"]  # a reference row, with no paper claim
    matched = result["extra"]["compute_matched"]["dmae"]  # ...but reversed at equal compute
    assert matched["probe"] == "reversed" and matched["finetune"] == "holds"
    assert round(matched["probe_diff"], 3) == -0.05
    assert "| DMAE | -5.0 / +0.2 | reversed | holds |" in capsys.readouterr().out


def test_mae_long_trains_compute_matched_steps():
    config = mae_family._config("mae_long", "tiny", 0, [], steps=3)
    family = mae_family._family()
    assert config.total_steps == 3 * family.COMPUTE_MATCHED_STEPS
    assert mae_family._config("mae", "tiny", 0, [], steps=3).total_steps == 3
    assert config.model.to_dict() == mae_family._config("mae", "tiny", 0, [], steps=3).model.to_dict()
