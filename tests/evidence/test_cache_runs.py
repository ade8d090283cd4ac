import json
from functools import partial

from hft_bench.evidence.base import BASE_SETTINGS, load_or_train, weights_path
from hft_bench.evidence.metrics import evaluate, make_evalset
from hft_bench.evidence.runs import METHODS, run_grid, run_sequence
from safetensors.torch import load_file

from .conftest import TINY


def test_cache_trains_then_loads_then_rebuilds_corrupt(corpus, tmp_path):
    logs = []
    m1, info1 = load_or_train(corpus, TINY, tmp_path, logs.append)
    assert info1["source"] == "trained"
    path = weights_path({**BASE_SETTINGS, **TINY}, corpus, tmp_path)
    assert (
        path.exists() and json.loads(path.with_suffix(".json").read_text())["key"] == info1["key"]
    )
    m2, info2 = load_or_train(corpus, TINY, tmp_path, logs.append)
    assert info2["source"] == "cache"
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert (a == b).all(), k
    assert not [m for m in logs if "unreadable" in m]
    path.write_bytes(path.read_bytes()[:100])  # truncated
    m3, info3 = load_or_train(corpus, TINY, tmp_path, logs.append)
    assert info3["source"] == "trained"
    assert [m for m in logs if "unreadable" in m and str(path) in m]
    assert load_file(str(path))  # rewritten whole
    # other settings: another key, another file
    _, info4 = load_or_train(corpus, {**TINY, "seed": 1}, tmp_path, logs.append)
    assert info4["source"] == "trained" and info4["key"] != info1["key"]


def test_every_method_runs_and_grid_resumes(corpus, tmp_path):
    model, _ = load_or_train(corpus, TINY, tmp_path, lambda m: None)
    state = model.state_dict()
    settings = {**BASE_SETTINGS, **TINY}
    evalset = make_evalset(corpus, ("nouns_new", "verbs"), task_items=3)
    base = evaluate(model, evalset)
    for method in METHODS:
        recs = run_sequence(state, settings, corpus, evalset, domains=["nouns_new", "verbs"],
                            method=method, lr=1e-2, steps=1, seed=0)  # fmt: skip
        assert [r["stage"] for r in recs] == [0, 1] and not recs[-1]["diverged"]
        assert recs[-1]["knowledge_nll"] != base["knowledge_nll"], method
    cfgs = [dict(domains=["nouns_new"], method="fft", lr=1e-3, steps=1, seed=s, ratio=0.5)
            for s in (0, 1)]  # fmt: skip
    out = tmp_path / "grid.json"
    run = partial(run_sequence, state, settings, corpus, evalset)
    first = run_grid(cfgs, run, out, lambda m: None)
    logs = []
    again = run_grid(cfgs, run, out, logs.append)
    assert first == again and not logs


def test_checkpoint_equals_a_shorter_run(corpus, tmp_path):
    import math

    import pytest

    from hft_plugins import HFTError

    model, _ = load_or_train(corpus, TINY, tmp_path, lambda m: None)
    settings = {**BASE_SETTINGS, **TINY}
    evalset = make_evalset(corpus, ("nouns_new",), task_items=3)
    kw = dict(domains=["nouns_new"], lr=1e-2, seed=0)
    for method in ("fft", "hft-layer", "fft-replay"):
        long = run_sequence(model.state_dict(), settings, corpus, evalset, method=method,
                            steps=3, eval_at=[1, 2], **kw)  # fmt: skip
        assert [r["steps"] for r in long] == [1, 2, 3] and {r["run_steps"] for r in long} == {3}
        short = run_sequence(model.state_dict(), settings, corpus, evalset, method=method,
                             steps=2, **kw)[0]  # fmt: skip
        for key in ("knowledge_nll", "heldout_nll", "task_nll/nouns_new"):
            assert math.isclose(long[1][key], short[key], rel_tol=1e-6), (method, key)
    with pytest.raises(HFTError, match="badam"):
        run_sequence(model.state_dict(), settings, corpus, evalset, method="badam", steps=3,
                     eval_at=[1], **kw)  # fmt: skip
