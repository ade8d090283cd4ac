import json

import pytest
from hft_bench.evidence.experiment import run_benchmark, setup, write_report

from hft_plugins import HFTError

from .conftest import SIZES, TINY, WORDNET


@pytest.fixture(scope="module")
def su(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return setup(cache, TINY, SIZES, WORDNET, log=lambda m: None)


def test_tiny_grid_end_to_end(su, tmp_path):
    res = run_benchmark(tmp_path, seeds=[0, 1], lrs=[1e-3, 1e-2], steps=[1, 2],
                        methods=["fft", "hft-category"], ratios=[0.25], su=su,
                        stage_methods=["fft", "hft-layer"],
                        log=lambda m: None)  # fmt: skip
    text = res["report"]
    for section in ("## Frontier: nouns_new", "## Second domain: hypernym", "## HFT ratio", "3x =",
                    "## Number of stages", "matched learning", "Same lr"):  # fmt: skip
        assert section in text, section
    for png in ("frontier-nouns_new.png", "frontier-hypernym.png", "frontier-ratio.png",
                "stages.png"):  # fmt: skip
        assert (tmp_path / png).stat().st_size > 1000
    recs = json.loads((tmp_path / "frontier.json").read_text())["records"]
    assert len(recs) == 2 * 2 * 2 * 2  # seeds x lrs x steps x methods
    stages = json.loads((tmp_path / "stages.json").read_text())["records"]
    assert {r["stage"] for r in stages} == {0, 1, 2}
    assert write_report(tmp_path, su.base_scores, su.info) == text


def test_bad_inputs_one_line(su, tmp_path):
    kw = dict(seeds=[0, 1], lrs=[1e-3], steps=[1], su=su, log=lambda m: None)
    with pytest.raises(HFTError, match="unknown method 'sgd'"):
        run_benchmark(tmp_path, methods=["fft", "sgd"], **kw)
    with pytest.raises(HFTError, match="must include fft"):
        run_benchmark(tmp_path, methods=["lora"], **kw)
    with pytest.raises(HFTError, match="unknown domain 'poems'"):
        run_benchmark(tmp_path, methods=["fft"], domains=["poems"], **kw)
    with pytest.raises(HFTError, match="unknown part"):
        run_benchmark(tmp_path, methods=["fft"], parts=["everything"], **kw)


def test_demo_prints_a_reading(su, tmp_path):
    from hft_bench.evidence import run_demo

    lines = []
    res = run_demo(tmp_path, lrs=(1e-3, 1e-2), steps=(1, 2), seeds=(0, 1), su=su, log=lines.append)
    assert lines == [res["paragraph"]] and res["paragraph"].startswith("Demo reading (2 seeds")
    assert "matched learning" in res["paragraph"]
    assert (tmp_path / "demo-frontier.png").stat().st_size > 1000
