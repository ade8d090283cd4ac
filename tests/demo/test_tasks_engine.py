import pytest
import torch
from hft_bench import engine, tasks
from hft_bench.tokenizer import VOCAB, char_tokenizer, encode

from hft_plugins import HFTError


def test_shipped_corpora_are_what_the_generator_writes(tmp_path):
    tasks.write_corpora(tmp_path)
    for path in sorted(tasks.DATA_DIR.glob("*.jsonl")):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    assert len(list(tasks.DATA_DIR.glob("*.jsonl"))) == len(tasks.TASKS) * len(tasks.SPLITS)


@pytest.mark.parametrize("name", [t for t in tasks.TASKS if t != "facts"])
def test_algorithmic_tasks_hold_out_their_inputs(name):
    train = {r["prompt"] for r in tasks.load(name, "train")}
    val = {r["prompt"] for r in tasks.load(name, "val")}
    ev = {r["prompt"] for r in tasks.load(name, "eval")}
    assert not (train & ev) and not (train & val) and not (val & ev)


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_candidates_start_with_the_answer_and_are_distinct(name):
    for row in tasks.load(name, "eval"):
        assert row["candidates"][0] == row["completion"]
        assert len(set(row["candidates"])) == len(row["candidates"]) >= 4
        assert all(c in VOCAB for c in row["prompt"] + "".join(row["candidates"]))


def test_tasks_are_distinguishable_by_prompt():
    prefixes = {
        name: {r["prompt"].split()[0] for r in tasks.load(name, "train")} for name in tasks.TASKS
    }
    assert all(len(p) == 1 for p in prefixes.values())
    assert len({next(iter(p)) for p in prefixes.values()}) == len(tasks.TASKS)


def test_unknown_task_and_split_are_one_line_errors():
    with pytest.raises(HFTError, match="unknown task 'nope'") as err:
        tasks.check_tasks(["reverse", "nope"])
    assert "\n" not in str(err.value)
    with pytest.raises(HFTError, match="unknown split"):
        tasks.load("copy", "test")
    with pytest.raises(HFTError, match="empty"):
        tasks.check_tasks([])


def test_tokenizer_matches_the_plain_encoder():
    tok = char_tokenizer()
    text = "ask ab 12>"
    assert tok(text)["input_ids"] == encode(text)
    assert tok.decode(encode(text)) == text
    assert tok.eos_token_id == VOCAB["<eos>"] and tok.pad_token_id == VOCAB["<pad>"]


def test_teacher_forced_exact_match_equals_greedy_generation(quick_base):
    """The one-pass exact match must agree with real greedy decoding, row by row."""
    rows = list(tasks.load("copy", "eval")[:12]) + list(tasks.load("facts", "eval")[:12])
    for row in rows:
        ids = torch.tensor([encode(row["prompt"])])
        target = encode(row["completion"]) + [engine.EOS]
        gen = quick_base.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=len(target),
            do_sample=False,
            pad_token_id=engine.PAD,
            eos_token_id=engine.EOS,
        )[0, ids.shape[1] :].tolist()
        assert (gen == target) == (engine.exact_match(quick_base, [row]) == 1.0)


def test_latent_score_is_strictly_the_answer_first(quick_base):
    row = dict(tasks.load("copy", "eval")[0])
    assert engine.latent_score(quick_base, [{**row, "candidates": [row["completion"]] * 2}]) == 0.0
