"""The chat-model benchmark's pieces on a tiny model: tasks, probes, DPO, runs, plan, report."""

import json
import math

import pytest
import torch
from hft_bench.chat_evidence import plan, probes, report, runs, tasks
from hft_bench.chat_evidence.experiment import Grid, run_benchmark
from hft_bench.evidence.corpus import build_corpus

from hft_plugins import HFTError

from .chat_fixtures import CHAT_SIZES, chat_setup
from .conftest import WORDNET


@pytest.fixture(scope="module")
def chat_corpus():
    return build_corpus(WORDNET, CHAT_SIZES)


@pytest.fixture(scope="module")
def su(chat_corpus):
    with pytest.MonkeyPatch.context() as mp:
        torch.set_num_threads(1)
        yield chat_setup(chat_corpus, mp)[0]


def test_tasks_hold_out_their_first_items_and_pair_each_question(chat_corpus):
    splits = tasks.load(chat_corpus, tasks.SEQUENCE, train=3, heldout=2)
    assert [s.kind for s in splits.values()] == ["sft", "dpo", "sft"]
    for split in splits.values():
        assert len(split.train) == 3 and len(split.heldout) == 2
        assert not {i.prompt for i in split.train} & {i.prompt for i in split.heldout}
    again = tasks.load(chat_corpus, ["kind-of"], train=3, heldout=2)["kind-of"]
    assert again == splits["kind-of"]  # a fixed draw
    for item in splits["kind-of"].train:
        word = item.prompt.split('"')[1]
        assert item.answer.startswith(f"{word} is a kind of ") and item.rejected != item.answer
        assert item.rejected.startswith(f"{word} is a kind of ")
    assert splits["define"].heldout[0].prompt.startswith('Define the word "')
    with pytest.raises(HFTError, match="unknown chat task 'poems'"):
        tasks.load(chat_corpus, ["poems"], train=1, heldout=1)
    with pytest.raises(HFTError, match="task verb has 5 items, 2 held out \\+ 9 to train asked"):
        tasks.load(chat_corpus, ["verb"], train=9, heldout=2)


def test_task_ids_are_the_chat_templates_turns(chat_corpus):
    from hft_plugins.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    item = tasks.load(chat_corpus, ["kind-of"], train=1, heldout=1)["kind-of"].train[0]
    prompt, chosen, rejected = tasks.ids(tok, item)
    assert tok.decode(prompt) == f"<|user|>{item.prompt}<|assistant|>"
    assert (
        tok.decode(chosen) == item.answer + "</s>"
        and tok.decode(rejected) == item.rejected + "</s>"
    )


def _by_hand(model, pairs):
    """(sum of log p, token count) of each pair, one unpadded sequence at a time."""
    out = []
    with torch.no_grad():
        for prompt, answer in pairs:
            ids = torch.tensor([list(prompt) + list(answer)])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            out.append((sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(answer)),
                        len(answer)))  # fmt: skip
    return out


def _pooled(scores):
    return -sum(s for s, _ in scores) / sum(n for _, n in scores)


def test_probes_score_what_each_metric_says(su):
    p = su.probes
    got = probes.evaluate(su.model, p, tasks.SEQUENCE)
    close = dict(rel_tol=1e-4, abs_tol=1e-5)
    assert math.isclose(got["drift_nll"], _pooled(_by_hand(su.model, p.drift)), **close)
    ends = [(q + a[:-1], [p.eos]) for i, (q, a) in enumerate(p.drift) if i in p.ended]
    assert math.isclose(got["turn_end_nll"], _pooled(_by_hand(su.model, ends)), **close)
    assert math.isclose(got["facts_nll"], _pooled(_by_hand(su.model, p.facts)), **close)
    assert math.isclose(got["text_nll"], _pooled(_by_hand(su.model, p.text)), **close)
    hits = 0
    for prompt, cands in p.choices:
        s = [lp for lp, _ in _by_hand(su.model, [(prompt, c) for c in cands])]
        hits += s[0] > max(s[1:])
    assert got["facts_choice"] == hits / len(p.choices)
    for name in tasks.SEQUENCE:
        assert math.isclose(got[f"task_nll/{name}"], _pooled(_by_hand(su.model, p.tasks[name])),
                            **close)  # fmt: skip
    chosen = _by_hand(su.model, p.tasks["kind-of"])
    rejected = _by_hand(su.model, p.rejected["kind-of"])
    margins = [c - r for (c, _), (r, _) in zip(chosen, rejected, strict=True)]
    assert math.isclose(got["margin/kind-of"], sum(margins) / len(margins), **close)
    assert got["pref_acc/kind-of"] == sum(m > 0 for m in margins) / len(margins)
    assert got == su.base_scores  # the base's scores are these


def test_probes_are_built_from_the_base(su):
    p = su.probes
    eos = p.eos
    ended = [i for i, (_, a) in enumerate(p.drift) if a[-1] == eos]
    assert len(p.drift) == len(probes.DRIFT_PROMPTS) and 0 < len(ended) < len(p.drift)
    assert p.ended == ended  # only the answers that ended their turn
    assert len(p.replay) == len(probes.REPLAY_PROMPTS)  # fft-replay is in the grid
    assert 0 < su.info["facts_known"] == len(p.facts) == len(p.choices)
    assert all(len(c) == 4 for _, c in p.choices)
    assert su.info["base_ended_turn"] == len(ended) and su.info["text_passages"] == len(p.text)


def test_a_base_that_never_ends_its_turn_is_refused(chat_corpus, monkeypatch):
    from hft_bench import chat_eval

    from .chat_fixtures import knowing_model

    def rambling(model, prompts, *, pad_id, eos_id, max_new_tokens, desc=None):
        return [[5] * max_new_tokens for _ in prompts]

    from hft_plugins.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    model = knowing_model(tok)
    monkeypatch.setattr(chat_eval, "greedy", rambling)
    splits = tasks.load(chat_corpus, ["define"], train=1, heldout=1)
    with pytest.raises(HFTError, match="ends none of its answers within 6 tokens") as err:
        probes.Probes.build(model, tok, splits, answer_tokens=6, replay=False)
    assert "\n" not in str(err.value)


def test_text_passages_are_a_fixed_draw_of_prose():
    a, b = probes.text_passages(), probes.text_passages()
    assert a == b and len(a) == probes.TEXT_PASSAGES and len(set(a)) == len(a)
    assert all(len(t) >= 300 and "\n" not in t for t in a)
    assert probes.text_passages(seed=1) != a


def test_dpo_loss_is_the_sigmoid_loss_of_the_log_ratios(su):
    rows = runs.dpo_rows(su.model, su.rows["kind-of"][:2], su.probes.pad)
    inputs = runs.dpo_batch(rows, su.probes.pad)
    with torch.no_grad():
        loss = runs.dpo_loss(su.model, inputs).item()
    # the model is its own reference: every log-ratio is 0, the loss log 2
    assert math.isclose(loss, math.log(2), rel_tol=1e-5)
    shifted = dict(inputs, ref_chosen=inputs["ref_chosen"] - 3.0)  # chosen 3 nats likelier
    with torch.no_grad():
        loss = runs.dpo_loss(su.model, shifted).item()
    assert math.isclose(loss, -math.log(1 / (1 + math.exp(-0.1 * 3.0))), rel_tol=1e-5)


def test_a_checkpoint_equals_a_shorter_run(su):
    kw = dict(domains=["define"], lr=1e-3, seed=0)
    for method in ("fft", "hft-category", "lora", "fft-replay"):
        long = runs.run_sequence(su, method=method, steps=2, eval_at=[1], **kw)
        assert [r["steps"] for r in long] == [1, 2] and {r["run_steps"] for r in long} == {2}
        short = runs.run_sequence(su, method=method, steps=1, **kw)[0]
        for key in ("drift_nll", "facts_nll", "task_nll/define"):
            assert math.isclose(long[0][key], short[key], rel_tol=1e-6), (method, key)
        assert long[1]["drift_nll"] != short["drift_nll"], method  # the second step moved it


def test_lora_trains_at_ten_times_the_grids_lr_and_records_the_grids(su, monkeypatch):
    seen = {}
    real = runs.harness_methods.run_stage

    def spy(method, *args, lr, **kwargs):
        seen[method] = lr
        return real(method, *args, lr=lr, **kwargs)

    monkeypatch.setattr(runs.harness_methods, "run_stage", spy)
    for method in ("fft", "lora"):
        rec = runs.run_sequence(su, domains=["define"], method=method, lr=1e-4, steps=1, seed=0)
        assert rec[0]["lr"] == 1e-4
    assert seen == {"fft": 1e-4, "lora": 1e-4 * runs.LORA_LR_SCALE} and runs.LORA_LR_SCALE == 10


def test_every_method_runs_the_sequence_and_leaves_the_base_alone(su):
    before = {k: v.clone() for k, v in su.model.state_dict().items()}
    for method in runs.METHODS:
        recs = runs.run_sequence(su, domains=list(tasks.SEQUENCE), method=method, lr=1e-3,
                                 steps=1, seed=0)  # fmt: skip
        assert [(r["stage"], r["domain"]) for r in recs] == list(enumerate(tasks.SEQUENCE))
        for r in recs:  # the tasks trained so far are scored
            assert not r["diverged"] and "drift_nll" in r and "facts_choice" in r
            scored = {k.split("/")[1] for k in r if k.startswith("task_nll/")}
            assert scored == set(tasks.SEQUENCE[: r["stage"] + 1])
        assert set(su.base_scores) <= set(recs[-1])
        assert recs[-1]["drift_nll"] != su.base_scores["drift_nll"], method
    for k, v in su.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(HFTError, match="eval_at needs a single task"):
        runs.run_sequence(su, domains=list(tasks.SEQUENCE), method="fft", lr=1e-3, steps=2,
                          seed=0, eval_at=[1])  # fmt: skip


def _both(seconds):
    return {"wall": seconds, "cpu": 2 * seconds}


TIMING = {"step": {k: _both(v) for k, v in
                   {"fft/sft": 2.0, "fft/dpo": 3.0, "lora/sft": 1.0, "lora/dpo": 1.5}.items()},
          "dpo_ref_pair": _both(0.1),
          "eval": {"1": _both(5.0), "2": _both(6.0), "3": _both(7.0)},
          "copy": _both(0.5), "setup": _both(60.0), "batch_size": 4, "load_average": 3.0}  # fmt: skip


def test_the_plan_multiplies_measured_times_over_the_grid():
    grid = Grid(methods=["fft", "lora"], seeds=[0, 1], lrs=[1e-5, 1e-4], steps=[2, 6],
                sequence_lrs=[1e-4], sequence_steps=3, batch_size=4)  # fmt: skip
    est = plan.estimate(grid, TIMING)
    # one run per method, lr and seed, to 6 steps, evaluated at 2 and 6
    single = 2 * 2 * (0.5 + 6 * 2.0 + 2 * 5.0) + 2 * 2 * (0.5 + 6 * 1.0 + 2 * 5.0)
    # define (sft), kind-of (dpo: steps x batch reference pairs), verb (sft); after each
    # stage the tasks so far are scored
    fft_seq = 0.5 + 3 * 2.0 + (3 * 3.0 + 3 * 4 * 0.1) + 3 * 2.0 + 5.0 + 6.0 + 7.0
    lora_seq = 0.5 + 3 * 1.0 + (3 * 1.5 + 3 * 4 * 0.1) + 3 * 1.0 + 5.0 + 6.0 + 7.0
    sequence = 2 * (fft_seq + lora_seq)
    assert est["parts"]["single"] == {"runs": 8, "steps": 48, "wall": pytest.approx(single),
                                      "cpu": pytest.approx(2 * single)}  # fmt: skip
    assert est["parts"]["sequence"] == {"runs": 4, "steps": 36, "wall": pytest.approx(sequence),
                                        "cpu": pytest.approx(2 * sequence)}  # fmt: skip
    assert est["wall"] == pytest.approx(60.0 + single + sequence)
    assert est["cpu"] == pytest.approx(2 * est["wall"])
    text = plan.describe(grid, TIMING, est, threads=2)
    assert "| lora | 1.00 / 2.00 | 1.50 / 3.00 |" in text
    assert f"{est['wall'] / 60:.1f} min wall" in text and f"{est['wall'] / 60:.1f} min on 2" in text


def test_the_plan_measures_every_method_and_kind(su):
    timing = plan.measure(su, ["fft", "hft-layer"], log=lambda m: None)
    assert set(timing["step"]) == {"fft/sft", "fft/dpo", "hft-layer/sft", "hft-layer/dpo"}
    assert set(timing["eval"]) == {"1", "2", "3"}
    for seconds in [*timing["step"].values(), *timing["eval"].values(), timing["dpo_ref_pair"]]:
        assert seconds["wall"] > 0 and seconds["cpu"] > 0


def _record(method, seed, lr, steps, learn, forget, domains=("define",), stage=0):
    """A record whose learning and every forgetting measure are given (base scores: 1.0)."""
    r = dict(method=method, seed=seed, lr=lr, steps=steps, run_steps=steps, ratio=0.5,
             eval_at=[], domains=list(domains), domain=domains[stage], stage=stage,
             diverged=False, train_s=1.0, eval_s=1.0, facts_choice=1.0)  # fmt: skip
    for n in domains:
        r[f"task_nll/{n}"] = 1.0 - learn
    for key in ("drift_nll", "turn_end_nll", "facts_nll", "text_nll"):
        r[key] = 1.0 + forget
    if "kind-of" in domains:
        r["pref_acc/kind-of"] = 0.5
    return r


BASE = {"task_nll/define": 1.0, "task_nll/kind-of": 1.0, "task_nll/verb": 1.0, "drift_nll": 1.0,
        "turn_end_nll": 1.0, "facts_nll": 1.0, "text_nll": 1.0, "facts_choice": 1.0}  # fmt: skip


def test_the_report_reads_forgetting_at_matched_learning(tmp_path):
    """HFT forgets 0.1 less than FFT at every learning level, on every seed: the matched
    difference is exactly -0.1 with no spread; LoRA never learns enough to be matched."""
    single = []
    for seed in (0, 1):
        for i, lr in enumerate((1e-5, 1e-4)):
            for steps in (2, 4):
                learn = 0.2 * (i + 1) * steps / 2 + 0.01 * seed
                single += [_record("fft", seed, lr, steps, learn, learn),
                           _record("hft-category", seed, lr, steps, learn, learn - 0.1),
                           _record("lora", seed, lr, steps, 0.01, 0.0)]  # fmt: skip
    seq = list(tasks.SEQUENCE)
    sequence = [_record(m, seed, lr, 1, 0.3 * (i + 1), 0.3 * (i + 1) - d, seq, stage)
                for seed in (0, 1) for i, lr in enumerate((1e-5, 3e-5, 1e-4))
                for m, d in (("fft", 0.0), ("hft-category", 0.05)) for stage in range(3)]  # fmt: skip
    info = {"model": "fixture", "params": 1000, "drift_prompts": 12, "base_ended_turn": 10,
            "facts_known": 13, "facts": 16, "text_passages": 24, "text_source": "pydoc_data"}  # fmt: skip
    (tmp_path / "base.json").write_text(json.dumps({"scores": BASE, "info": info, "sizes": {}}))
    (tmp_path / "single.json").write_text(json.dumps({"records": single}))
    (tmp_path / "sequence.json").write_text(json.dumps({"records": sequence}))
    text = report.write_report(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for measure in report.FORGETTING:
        rows = summary["single"][f"{measure}/hft-category"]
        assert [r["diff"]["mean"] for r in rows] == pytest.approx([-0.1] * 3)
        assert all(r["diff"]["ci"] == pytest.approx(0, abs=1e-12) and r["diff"]["n"] == 2
                   for r in rows)  # fmt: skip
        assert all(r["diff"]["n"] == 0 for r in summary["single"][f"{measure}/lora"])
        end = summary["sequence"][f"{measure}/hft-category"]
        assert [r["diff"]["mean"] for r in end] == pytest.approx([-0.05] * 3)
    assert "| drift | hft-category | -0.100 ± 0.000 (n=2)" in text
    assert "| drift | lora | not reached | not reached | not reached |" in text
    assert "## Sequence: define → kind-of → verb (SFT, DPO, SFT)" in text
    for png in ("frontier-single.png", "frontier-sequence.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_the_same_lr_table_pairs_each_seed_with_ffts_run_at_that_lr():
    ends = [_record("fft", 0, 1e-4, 4, 1.0, 0.5), _record("fft", 1, 1e-4, 4, 1.2, 0.7),
            _record("hft-category", 0, 1e-4, 4, 0.9, 0.3), _record("hft-category", 1, 1e-4, 4, 1.0, 0.4),
            _record("hft-category", 2, 1e-4, 4, 5.0, 5.0),  # no FFT run of seed 2: not paired
            _record("fft", 0, 1e-5, 4, 0.2, 0.1)]  # fmt: skip
    lines, summary = report.paired_table(ends, BASE, "after 4 steps")
    cells = summary["hft-category/0.0001"]
    assert cells["learning"]["n"] == 2 and math.isclose(cells["learning"]["mean"], -0.15)
    for measure in ("drift", "turn end", "facts", "text"):
        assert math.isclose(cells[measure]["mean"], -0.25) and cells[measure]["ci"] > 0
    assert "hft-category/1e-05" in summary and summary["hft-category/1e-05"]["drift"]["n"] == 0
    assert "fft/0.0001" not in summary
    assert "| hft-category | 0.0001 | -0.150 ± " in "\n".join(lines)


def test_the_benchmark_writes_records_and_a_report_and_resumes(chat_corpus, tmp_path, monkeypatch):
    su, grid = chat_setup(chat_corpus, monkeypatch, methods=["fft", "hft-category"], seeds=[0, 1])
    res = run_benchmark(tmp_path, su, grid, log=lambda m: None)
    single = json.loads((tmp_path / "single.json").read_text())["records"]
    assert len(single) == 2 * 2 * 2  # seeds x methods x step counts read, one run each
    sequence = json.loads((tmp_path / "sequence.json").read_text())["records"]
    assert len(sequence) == 2 * 2 * 3 and {r["stage"] for r in sequence} == {0, 1, 2}
    assert "## One stage: `define` (SFT)" in res["report"] and "## Sequence" in res["report"]
    logs = []
    again = run_benchmark(tmp_path, su, grid, log=logs.append)
    assert again["report"] == res["report"]
    assert not [m for m in logs if m.startswith(("single ", "sequence "))]  # nothing ran again
    other = Grid(**{**vars(grid), "batch_size": 1})
    with pytest.raises(HFTError, match="holds runs of other settings") as err:
        run_benchmark(tmp_path, su, other, log=lambda m: None)
    assert "\n" not in str(err.value)
    before = (tmp_path / "base.json").read_text()
    su.info["items_sha256"] = "another"  # probes scored on other items: never mixed
    with pytest.raises(HFTError, match="holds runs of other settings or items"):
        run_benchmark(tmp_path, su, grid, log=lambda m: None)
    assert (tmp_path / "base.json").read_text() == before


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(methods=["fft", "sgd"]), "unknown method 'sgd'"),
        (dict(methods=["lora"]), "must include fft"),
        (dict(parts=["everything"]), "unknown part 'everything'"),
        (dict(lrs=[0.0]), "every learning rate must be positive"),
        (dict(steps=[0, 2]), "every step count must be at least 1"),
        (dict(batch_size=0), "batch size must be at least 1"),
        (dict(seeds=[]), "the seeds list is empty"),
    ],
)
def test_bad_grids_are_one_line_errors(change, message):
    with pytest.raises(HFTError, match=message) as err:
        Grid(**change).check()
    assert "\n" not in str(err.value)


def test_the_dpo_loss_is_trls_on_the_same_rows(tmp_path):
    """TRL's DPOTrainer (its tokenization of conversational preference rows, its default
    sigmoid loss at beta 0.1, a reference model) and this benchmark's rows and loss agree."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from hft_plugins.testing import tiny_model, tiny_tokenizer
    from tests.helpers import CPU_NO_CHECKPOINTING

    tok = tiny_tokenizer()
    items = [tasks.Item('What kind of thing is "cat"?', "cat is a kind of feline.",
                        "cat is a kind of tree."),
             tasks.Item('What kind of thing is "oak"?', "oak is a kind of tree.",
                        "oak is a kind of feline.")]  # fmt: skip
    rows = [{"prompt": [{"role": "user", "content": i.prompt}],
             "chosen": [{"role": "assistant", "content": i.answer}],
             "rejected": [{"role": "assistant", "content": i.rejected}]} for i in items]  # fmt: skip
    policy, ref = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    with torch.no_grad():
        policy.lm_head.weight.mul_(20)  # far from its reference: the loss far from log 2
    args = DPOConfig(output_dir=str(tmp_path), beta=runs.DPO_BETA,
                     **{**CPU_NO_CHECKPOINTING, "max_steps": 1, "per_device_train_batch_size": 2})  # fmt: skip
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    policy.eval()
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch).item()
        pad = tok.pad_token_id
        ours = runs.dpo_loss(policy, runs.dpo_batch(
            runs.dpo_rows(ref, [tasks.ids(tok, i) for i in items], pad), pad)).item()  # fmt: skip
    assert abs(theirs - math.log(2)) > 0.1
    assert math.isclose(ours, theirs, rel_tol=1e-5)
