import argparse
import json

import pytest
from hft_bench import bench, commands, methods

from hft_plugins import HFTError


def _parser():
    parser = argparse.ArgumentParser(prog="hft")
    sub = parser.add_subparsers(dest="command", required=True)
    commands.add_demo_parser(sub)
    commands.add_toy_parser(sub)
    commands.add_bench_parser(sub)
    return parser


def test_demo_fast_writes_complete_results(quick_base, tmp_path, capsys):
    out = tmp_path / "demo"
    args = _parser().parse_args(["toy", "tasks", "--steps", "3", "--seed", "1", "--out", str(out)])
    assert args.run(args) == 0
    result = json.loads((out / "results.json").read_text())
    assert (out / "demo.png").stat().st_size > 0
    assert set(result["runs"]) == {"fft", "hft-category"}
    names = [*result["base_tasks"], result["task"]]
    for scores in [result["before"]] + [r["after"] for r in result["runs"].values()]:
        assert set(scores) == set(names)
        assert all(0 <= scores[n][m] <= 1 for n in names for m in ("exact", "latent"))
    assert result["runs"]["fft"]["trainable_fraction"] == 1.0
    assert 0.4 < result["runs"]["hft-category"]["trainable_fraction"] < 0.7
    # HFT keeps optimizer state for its trainable half only (AdamW step counters aside)
    fft, hft = result["runs"]["fft"], result["runs"]["hft-category"]
    assert hft["optimizer_state_mb"] == pytest.approx(
        fft["optimizer_state_mb"] * hft["trainable_fraction"], rel=1e-3
    )
    printed = capsys.readouterr().out
    assert "hft-category" in printed and "s/step" in printed


def _check_bench_result(result, task_names, seeds, method_names):
    assert [r["method"] for r in result["runs"]] == [m for m in method_names for _ in seeds]
    for run in result["runs"]:
        for metric in ("exact", "latent"):
            r = run[metric]
            assert len(r) == len(task_names) and all(len(row) == len(task_names) for row in r)
            assert all(0 <= v <= 1 for row in r for v in row)
            t = len(r)
            op = sum(r[-1]) / t
            bwt = sum(r[-1][j] - r[j][j] for j in range(t - 1)) / (t - 1)
            assert bench.op_bwt(r) == pytest.approx((op, bwt))
    for method in method_names:
        s = result["summary"][method]
        mine = [r for r in result["runs"] if r["method"] == method]
        ops = [bench.op_bwt(r["exact"])[0] for r in mine]
        assert s["op_exact"]["values"] == pytest.approx(ops)
        assert s["op_exact"]["mean"] == pytest.approx(sum(ops) / len(ops))


def test_bench_fast_two_methods_with_lr_grid(quick_base, tmp_path, capsys):
    out = tmp_path / "bench"
    args = _parser().parse_args(
        [
            "toy",
            "forgetting",
            "--methods",
            "fft,hft-category",
            "--seeds",
            "0",
            "--steps",
            "2",
            "--tasks",
            "reverse,shift",
            "--lrs",
            "1e-3,3e-3",
            "--eval-rows",
            "20",
            "--out",
            str(out),
        ]
    )
    assert args.run(args) == 0
    result = json.loads((out / "results.json").read_text())
    _check_bench_result(result, ["reverse", "shift"], [0], ["fft", "hft-category"])
    assert len(result["grid"]) == 4 and all(g["split"] == "val" for g in result["grid"])
    assert set(result["setting"]["chosen_lr"]) == {"fft", "hft-category"}
    for method, lr in result["setting"]["chosen_lr"].items():
        assert lr == bench.pick_lr(result["grid"])[method]
    assert (out / "forgetting.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert all(f"| {m} |" in report for m in ("fft", "hft-category"))
    assert "OP exact" in capsys.readouterr().out


def test_every_method_runs_a_sequence(quick_base, tmp_path):
    result = bench.run_bench(
        methods_=list(methods.METHODS),
        seeds=[0],
        steps=2,
        task_names=["shift", "add"],
        out=tmp_path,
        lrs=[1e-3],
        eval_rows=8,
    )
    _check_bench_result(result, ["shift", "add"], [0], list(methods.METHODS))
    assert result["grid"] == [] and set(result["setting"]["chosen_lr"].values()) == {1e-3}
    assert (tmp_path / "forgetting.png").exists()


def test_pick_lr_takes_best_new_task_score_ties_to_smaller():
    def run(method, lr, diag):
        return {"method": method, "lr": lr, "new_task_exact": [diag, diag]}

    grid = [
        run("a", 3e-3, 0.5),
        run("a", 1e-3, 0.5),
        run("a", 1e-2, 0.2),
        run("b", 1e-3, 0.1),
        run("b", 1e-2, 0.9),
    ]
    assert bench.pick_lr(grid) == {"a": 1e-3, "b": 1e-2}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "fft,sgd"], "unknown method 'sgd'"),
        (["--tasks", "reverse,poetry"], "unknown task 'poetry'"),
        (["--seeds", ""], "seed list is empty"),
        (["--seeds", " , "], "seed list is empty"),
        (["--seeds", "0,x"], "seed 'x'"),
        (["--lrs", "fast"], "learning-rate grid"),
    ],
)
def test_bench_bad_input_is_one_line_error(argv, message, tmp_path):
    args = _parser().parse_args(["toy", "forgetting", "--out", str(tmp_path), *argv])
    with pytest.raises(HFTError, match=message) as err:
        args.run(args)
    assert "\n" not in str(err.value)


def test_unwritable_output_dir_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for argv in (
        ["demo", "--out", str(blocker / "out")],
        ["toy", "forgetting", "--out", str(blocker / "out")],
        ["bench", "forgetting", "--out", str(blocker / "out")],
    ):
        args = _parser().parse_args(argv)
        with pytest.raises(HFTError, match="not writable") as err:
            args.run(args)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "poetry"], "unknown task 'poetry'"),
        (["--task", "facts"], "base task"),
        (["--strategy", "bogus"], "unknown strategy 'bogus'"),
        (["--ratio", "1.5"], "ratio must be in"),
    ],
)
def test_demo_bad_input_is_one_line_error(argv, message, tmp_path):
    args = _parser().parse_args(["toy", "tasks", "--out", str(tmp_path), *argv])
    with pytest.raises(HFTError, match=message):
        args.run(args)


def test_matched_retention_interpolates_both_curves_at_the_shared_best_score():
    curves = {
        "fft": [(1e-3, 0.2, 0.5), (3e-3, 0.6, 0.1)],
        "hft-category": [(1e-3, 0.1, 0.8), (3e-3, 0.4, 0.2)],
        "half-reset": [(1e-3, 0.0, 0.9), (3e-3, 0.01, 0.9)],
    }
    matched = bench.matched_retention(curves)
    assert matched["fft"] is None and matched["half-reset"] is None  # reference; never learned
    hit = matched["hft-category"]
    assert hit["new_task_score"] == 0.4
    assert hit["retention"] == pytest.approx(0.2)
    assert hit["reference_retention"] == pytest.approx(0.3)  # halfway from 0.5 to 0.1


def test_the_harness_adds_its_commands_through_the_plugin_hook(monkeypatch, capsys):
    """hft-bench's entry point adds `hft demo`/`hft bench`; without it, one line says where."""
    from hft_plugins import registry
    from hft_plugins.cli import build_parser, main

    registry.reset()
    assert {"demo", "bench", "toy"} <= set(build_parser().commands)
    assert "hft_bench" in dict(registry.manager().list_name_plugin())
    monkeypatch.setenv("HFT_DISABLE_PLUGINS", "hft_bench")
    registry.reset()
    try:
        assert "demo" not in build_parser().commands
        assert main(["demo"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            "hft: error: 'hft demo' comes with hft-bench, the evidence harness of hft-plugins, "
            "which is not installed here"
        )
    finally:
        monkeypatch.delenv("HFT_DISABLE_PLUGINS")
        registry.reset()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--strategy", "bogus"], "unknown strategy 'bogus'"),
        (["--steps", "0"], "steps must be at least 1"),
        (["--heldout", "0"], "heldout must be at least 1"),
        (["--lr", "0"], "learning rate must be positive"),
    ],
)
def test_demo_refuses_bad_values_before_loading(argv, message, tmp_path):
    args = _parser().parse_args(["demo", "--out", str(tmp_path), *argv])
    with pytest.raises(HFTError, match=message) as err:
        args.run(args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["toy", "wordnet", "--domain", "poems"], "unknown domain 'poems'"),
        (["toy", "wordnet", "--strategy", "bogus"], "unknown strategy 'bogus'"),
        (["bench", "forgetting", "--methods", "fft,sgd"], "unknown method 'sgd'"),
        (["bench", "forgetting", "--methods", "lora"], "must include fft"),
        (["bench", "forgetting", "--lrs", "fast"], "--lrs 'fast' is not a comma list of numbers"),
        (["bench", "forgetting", "--steps", "4,x"], "--steps '4,x' is not a comma list of whole"),
        (["bench", "forgetting", "--seeds", ""], "seed list is empty"),
        (["bench", "forgetting", "--parts", "all"], "unknown part 'all'"),
    ],
)
def test_bad_values_are_one_line_errors_before_loading(argv, message, tmp_path):
    args = _parser().parse_args([*argv, "--out", str(tmp_path)])
    with pytest.raises(HFTError, match=message) as err:
        args.run(args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["demo", "wordnet"], "wordnet"),  # the toy demos are `hft toy ...`
        (["demo", "--domain", "verbs"], "--domain"),
        (["toy", "tasks", "--model", "x"], "--model"),
        (["toy", "wordnet", "--steps", "5"], "--steps"),
        (["toy", "forgetting", "--sequence-steps", "5"], "--sequence-steps"),
        (["bench", "forgetting", "--tasks", "reverse,shift"], "--tasks"),
        (["bench", "forgetting", "--workers", "2"], "--workers"),
    ],
)
def test_a_flag_of_another_setting_is_an_argparse_error(argv, flag, capsys):
    """Each setting has its own options: a flag given where it does nothing is refused by
    the parser itself, naming the flag."""
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    assert exit_.value.code == 2
    assert flag in capsys.readouterr().err


def test_each_setting_reads_its_own_flags():
    parser = _parser()
    real = parser.parse_args(["demo", "--steps", "3", "--lr", "1e-4", "--model", "m"])
    assert (real.steps, real.lr, real.model) == (3, 1e-4, "m")
    tasks_ = parser.parse_args(["toy", "tasks", "--steps", "3", "--lr", "1e-2"])
    assert (tasks_.steps, tasks_.lr) == (3, 1e-2)
    wordnet = parser.parse_args(["toy", "wordnet", "--seeds", "0", "--lr", "3e-3"])
    assert (wordnet.seeds, wordnet.lr) == ("0", 3e-3)
    bench_ = parser.parse_args(["bench", "forgetting", "--model", "m", "--sequence-steps", "4"])
    assert (bench_.model, bench_.sequence_steps, bench_.plan) == ("m", 4, False)
    toy = parser.parse_args(["toy", "forgetting", "--tasks", "reverse,shift"])
    assert toy.tasks == "reverse,shift"
    runs = [real.run, tasks_.run, wordnet.run, bench_.run, toy.run]
    assert len(set(runs)) == len(runs)
