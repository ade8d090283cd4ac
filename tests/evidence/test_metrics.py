import math

import torch
from hft_bench.evidence.base import VOCAB, VOCAB_SIZE, make_batch
from hft_bench.evidence.metrics import completion_logprobs, nll, probe_accuracy, probe_candidates


class Favours(torch.nn.Module):
    """Logit 5 for one token everywhere, 0 for the rest: log-probs known in closed form."""

    def __init__(self, token: str):
        super().__init__()
        self.token = VOCAB[token]

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, VOCAB_SIZE)
        logits[..., self.token] = 5.0
        return type("Out", (), {"logits": logits})()


LOGZ = math.log(math.exp(5) + VOCAB_SIZE - 1)


def test_batch_labels_cover_completion_and_eos():
    b = make_batch([("ab: ", "cd")])
    n_prompt = 1 + 4  # <bos> and "ab: "
    assert (b["labels"][0, :n_prompt] == -100).all()
    assert b["labels"][0, n_prompt:].tolist() == [VOCAB["c"], VOCAB["d"], 2]
    everything = make_batch([("ab: ", "cd")], "all")
    assert (everything["labels"][0, 1:] != -100).all()


def test_nll_matches_closed_form():
    model = Favours("a")
    items = [("x: ", "aa"), ("yy: ", "b")]
    # tokens scored: a, a, <eos> | b, <eos>: 'a' has logit 5, the rest 0
    manual = -(2 * (5 - LOGZ) + (0 - LOGZ) + 2 * (0 - LOGZ)) / 5
    assert math.isclose(nll(model, items), manual, rel_tol=1e-6)
    per_item = completion_logprobs(model, items)
    assert per_item[1].tokens == 2 and math.isclose(per_item[1].logprob, -2 * LOGZ, rel_tol=1e-6)


def test_nll_matches_a_real_model_by_hand():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    items = [("cat: ", "a pet"), ("dog: ", "an animal that barks")]
    total, count = 0.0, 0
    for prompt, completion in items:  # one unpadded sequence at a time
        b = make_batch([(prompt, completion)])
        logp = torch.log_softmax(model(input_ids=b["input_ids"]).logits[0, :-1], -1)
        for pos, tok in enumerate(b["labels"][0, 1:].tolist()):
            if tok != -100:
                total -= logp[pos, tok].item()
                count += 1
    assert math.isclose(nll(model, items), total / count, rel_tol=1e-5)


def test_probe_picks_the_max():
    model = Favours("a")
    cands = [("p: ", ["aa", "bb", "cc"]), ("q: ", ["bb", "aa", "cc"]), ("r: ", ["cc", "bb", "dd"])]
    # row 1: right 'aa' is likeliest; row 2: a distractor is; row 3: a tie is not a hit
    assert probe_accuracy(model, cands) == 1 / 3


def test_probe_candidates_fixed_and_distinct(corpus):
    a = probe_candidates(corpus.splits["probe"], corpus.splits["base"], k=4, seed=1)
    b = probe_candidates(corpus.splits["probe"], corpus.splits["base"], k=4, seed=1)
    assert a == b
    for (prompt, right), (p2, cands) in zip(corpus.splits["probe"], a, strict=True):
        assert p2 == prompt and cands[0] == right and len(set(cands)) == 4
