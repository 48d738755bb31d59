"""`python -m lab train` and `python -m lab bench`: events on stdout, runs on disk, one-line
errors with exit status 2, Ctrl-C that still saves, and the bench's case machinery."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab import bench
from lab.cli import main
from lab.runs import list_runs, load_run

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--dataset", "digits", "--train-size", "128", "--test-size", "64", "--batch-size", "32",
         "--device", "cpu"]


def _lab(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, **kw)


def test_json_events_end_with_the_result_and_the_saved_run(tmp_path):
    out = tmp_path / "runs"
    proc = _lab("train", "--preset", "LeNet-5", *SMALL, "--epochs", "2", "--lr", "0.01",
                "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("epoch") == 2 and "step" in kinds
    last = events[-1]
    assert last["status"] == "completed" and last["epochs"] == 2
    for key in ("test_acc", "train_loss", "images_per_sec", "epochs", "run_dir"):
        assert last[key] is not None, key
    assert 0 <= last["test_acc"] <= 1 and last["images_per_sec"] > 0
    run_dir = Path(last["run_dir"])
    assert list_runs(out) == [run_dir]
    run = load_run(run_dir)
    assert run.spec["name"] == "LeNet-5" and run.spec["input"] == [1, 28, 28]
    assert run.settings["epochs"] == 2 and run.settings["lr"] == 0.01
    assert [e["type"] for e in run.metrics] == kinds
    assert run.metrics[-1]["test_acc"] == last["test_acc"]
    assert run.dataset_info["name"] == "digits" and run.dataset_info["train_size"] == 128


def test_spec_file_and_width_follow_the_data_set(tmp_path, capsys):
    spec = {"name": "My net", "input": [3, 64, 64], "classes": 3, "layers": [
        {"block": "conv", "params": {"out": 8, "stride": 2}}, {"block": "global_avg_pool"},
        {"block": "linear"}]}
    path = tmp_path / "net.json"
    path.write_text(json.dumps(spec))
    code = main(["train", "--spec", str(path), *SMALL, "--epochs", "1", "--width", "0.5",
                 "--out", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "epoch 1:" in captured.out and "run saved to" in captured.out
    run = load_run(list_runs(tmp_path / "runs")[0])
    assert run.spec["input"] == [1, 28, 28] and run.spec["classes"] == 10
    assert run.spec["width"] == 0.5 and run.model.layers[0].conv.out_channels == 4


@pytest.mark.parametrize("args,words", [
    (["--preset", "NoSuchNet"], "unknown preset"),
    (["--preset", "LeNet-5", "--dataset", "no-such-set"], "unknown dataset"),
    (["--preset", "LeNet-5", "--epochs", "0"], "epochs"),
    (["--preset", "LeNet-5", "--epochs", "-3"], "epochs"),
    (["--preset", "LeNet-5", "--lr", "0"], "learning rate"),
    (["--preset", "LeNet-5", "--lr", "-0.1"], "learning rate"),
    (["--preset", "LeNet-5", "--batch-size", "0"], "batch size"),
    (["--preset", "LeNet-5", "--train-size", "0"], "--train-size"),
    (["--preset", "LeNet-5", "--width", "9"], "width"),
    (["--spec", "/no/such/spec.json"], "does not exist"),
    (["--preset", "LeNet-5", "--optimizer", "rmsprop"], "invalid choice"),
    (["--preset", "LeNet-5", "--epochs", "two"], "invalid int value"),
    ([], "one of the arguments --preset --spec --resume is required"),
])
def test_bad_arguments_exit_2_with_one_line(args, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        sys.exit(main(["train", *args, "--out", str(tmp_path)]))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err
    assert err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_bad_spec_file_names_the_problem(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"layers": [{"block": "conv", "params": {"out": -1}}]}))
    assert main(["train", "--spec", str(path), *SMALL, "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: layer 0 (conv)") and err.count("\n") == 1
    path.write_text("{oops")
    assert main(["train", "--spec", str(path), *SMALL]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    # The same reader as `summary`: nesting that would blow Python's recursion is one line.
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["train", "--spec", str(path), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.endswith("spec is nested 100000 levels deep; the limit is 64\n") and err.count("\n") == 1


def test_missing_offline_data_exits_2_naming_the_files(tmp_path):
    proc = _lab("train", "--preset", "LeNet-5", "--dataset", "cifar10", "--data-root",
                str(tmp_path / "empty"), "--no-download", "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "cifar-10-python.tar.gz" in lines[0] and str(tmp_path / "empty") in lines[0]
    assert not (tmp_path / "runs").exists()


def test_diverging_run_exits_1_and_is_saved(tmp_path, capsys):
    code = main(["train", "--preset", "LeNet-5", *SMALL, "--epochs", "5", "--optimizer", "sgd",
                 "--lr", "1e6", "--json", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    last = json.loads(captured.out.splitlines()[-1])
    assert code == 1 and last["status"] == "diverged", last
    assert "lower learning rate" in captured.err and captured.err.count("\n") == 1
    assert Path(last["run_dir"]).is_dir()


def test_ctrl_c_stops_cleanly_and_saves_the_run(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab", "train", "--preset", "LeNet-5", *SMALL, "--epochs", "10000",
         "--json", "--out", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(json.loads(line))
            if lines[-1]["type"] == "step":
                proc.send_signal(signal.SIGINT)
                break
        rest, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopping after this batch" in err
    last = json.loads(rest.splitlines()[-1])
    assert last["status"] == "stopped" and 0 < last["epochs"] < 10000
    assert last["test_acc"] is not None
    assert load_run(last["run_dir"]).end["status"] == "stopped"


# ---------------------------------------------------------------- bench

def test_bench_cases_register_once_and_run_by_name(monkeypatch):
    monkeypatch.setattr(bench, "_CASES", dict(bench._CASES))
    assert bench.case_names()[:2] == ["train LeNet-5 on digits",
                                      "train ResNet-18 + CBAM (width 0.25) on shapes"]
    bench.register_case("constant", lambda opts: {"kind": "demo", "seconds": 1.5, "quick": opts.quick})
    with pytest.raises(ValueError, match="already registered"):
        bench.register_case("constant", lambda opts: {})
    seen = []
    results = bench.run_cases(bench.BenchOptions(quick=True), ["constant"], on_result=seen.append)
    assert results == seen == [{"name": "constant", "kind": "demo", "seconds": 1.5, "quick": True}]
    assert bench.format_result(results[0]) == "constant: kind demo, seconds 1.5, quick True"
    with pytest.raises(ValueError, match="unknown bench case 'nope'"):
        bench.run_cases(bench.BenchOptions(), ["nope"])


def test_compare_training_measures_both_loops():
    from lab.datasets import load_dataset
    ds = load_dataset("digits", train_size=256, test_size=64)
    spec = {"name": "tiny", "layers": [{"block": "conv", "params": {"out": 4, "stride": 2}},
                                       {"block": "global_avg_pool"}, {"block": "linear"}]}
    result = bench.compare_training(spec, ds, bench.BenchOptions(device="cpu", rounds=2, round_seconds=0.5),
                                    batch_size=16, warmup=2)
    assert result["kind"] == "training" and len(result["rounds"]) == 2 and result["batch_size"] == 16
    assert result["trainer_images_per_sec"] > 0 and result["bare_images_per_sec"] > 0
    for r in result["rounds"]:
        assert r["ratio"] == pytest.approx(r["trainer"] / r["bare"], abs=1e-3)
    # Two rounds: the median is their mean.
    assert result["ratio"] == pytest.approx(sum(r["ratio"] for r in result["rounds"]) / 2)
    assert result["steps_per_round"] >= 5
    assert "ratio" in bench.format_result({"name": "x", **result})


def test_bench_cli_lists_cases_and_refuses_unknown_ones(capsys):
    assert main(["bench", "--list"]) == 0
    assert "train LeNet-5 on digits" in capsys.readouterr().out
    assert main(["bench", "--case", "nope"]) == 2
    assert "unknown bench case" in capsys.readouterr().err
