import math

import pytest
from hft_bench.evidence.frontier import envelope, interpolate, matched, mean_ci

from hft_plugins import HFTError


def test_envelope_keeps_pareto_points():
    pts = [(0.1, 0.05), (0.2, 0.02), (0.3, 0.10), (0.25, 0.3), (0.4, 0.2), (0.4, 0.25)]
    # (0.1, 0.05) is beaten by (0.2, 0.02); (0.25, 0.3) by (0.3, 0.1); (0.4, 0.25) by (0.4, 0.2)
    assert envelope(pts) == [(0.2, 0.02), (0.3, 0.10), (0.4, 0.2)]


def test_interpolate_inside_only():
    env = [(0.2, 0.02), (0.3, 0.10), (0.4, 0.2)]
    assert math.isclose(interpolate(env, 0.25), 0.06)
    assert math.isclose(interpolate(env, 0.4), 0.2)
    assert interpolate(env, 0.1) is None and interpolate(env, 0.5) is None
    assert interpolate([], 0.3) is None
    assert interpolate([(0.3, 0.1)], 0.3) == 0.1


def test_mean_ci_known_values():
    s = mean_ci([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["n"] == 3
    assert math.isclose(s["ci"], 4.303 * 1.0 / math.sqrt(3))
    assert mean_ci([1.0])["ci"] is None and mean_ci([])["mean"] is None
    assert mean_ci([1.0, None, float("nan"), 3.0])["n"] == 2


def _recs(method, shift, seeds=(0, 1, 2)):
    out = []
    for seed in seeds:
        for lr, (learn, forget) in zip(
            (1, 2, 3), [(0.1, 0.1), (0.2, 0.3), (0.4, 0.5)], strict=True
        ):
            out.append(dict(method=method, seed=seed, lr=lr, steps=10, ratio=0.5,
                            learning=learn, forgetting=forget + shift + 0.01 * seed))  # fmt: skip
    return out


def test_matched_learning_difference():
    recs = _recs("fft", 0.0) + _recs("hft-category", -0.05)
    rows = matched(recs, "hft-category", "fft", fractions=(0.5, 0.75))
    # FFT's max mean learning is 0.4: levels 0.2 and 0.3; a constant shift of -0.05
    assert [round(r["level"], 6) for r in rows] == [0.2, 0.3]
    for r in rows:
        assert math.isclose(r["diff"]["mean"], -0.05) and r["diff"]["ci"] < 1e-12
        assert r["diff"]["n"] == 3
    assert math.isclose(rows[1]["reference_forgetting"]["mean"], 0.4 + 0.01)


def test_matched_needs_reference():
    with pytest.raises(HFTError, match="no fft runs"):
        matched(_recs("hft-category", 0.0), "hft-category", "fft")
