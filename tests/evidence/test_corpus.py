import pytest
from hft_bench.evidence.corpus import (
    build_corpus,
    clean,
    find_wordnet,
    fits,
    gloss_item,
    parse_line,
    sample_pos,
)

from hft_plugins import HFTError

from .conftest import SIZES, WORDNET

LINE = (
    "00050887 04 n 02 reappearance 0 return 7 003 @ 00050195 n 0000 + 00426301 v 0101 "
    '~ 00051077 n 0000 | the act of someone appearing again; "his reappearance as Hamlet '
    'has been long awaited"  '
)


def test_parse_real_line():
    s = parse_line(LINE)
    assert s.offset == "00050887" and s.pos == "n"
    assert s.words == ("reappearance", "return")
    assert s.hypernyms == ("00050195",)
    assert s.definition == "the act of someone appearing again"  # example dropped


def test_parse_skips_license_and_rejects_garbage():
    assert parse_line("  1 This software and database is being provided") is None
    with pytest.raises(HFTError, match="gloss separator"):
        parse_line("00000001 03 n 01 thing 0 000")
    with pytest.raises(HFTError, match="malformed"):
        parse_line("00000001 03 n zz thing | a gloss")


def test_clean():
    assert clean("Tour_de_Force `x' É") == "tour de force 'x'"


def test_splits_fixed_and_disjoint(corpus):
    again = build_corpus(WORDNET, SIZES)
    assert corpus.splits == again.splits and corpus.digest() == again.digest()
    heads = {n: {p for p, _ in corpus.splits[n]} for n in ("base", "heldout", "nouns_new")}
    assert not heads["base"] & heads["heldout"] and not heads["base"] & heads["nouns_new"]
    assert set(corpus.splits["base_eval"]) <= set(corpus.splits["base"])
    for p, c in corpus.splits["hypernym"]:
        assert p.endswith(" is a kind of ") and c
    assert ("irruption is a kind of ", "entrance") in corpus.splits["hypernym"]
    assert all(len(p) + len(c) <= 62 for items in corpus.splits.values() for p, c in items)


def test_too_many_asked():
    with pytest.raises(HFTError, match="usable noun synsets"):
        build_corpus(WORDNET, dict(SIZES, base=1000))


def test_sample_pos_is_a_fixed_draw_of_distinct_fitting_synsets():
    """The real-model demo's task: the same words on every machine for a seed, one synset per
    headword (one right answer), every item whole within MAX_CHARS."""
    drawn = sample_pos(WORDNET, "noun", 8, seed=3)
    assert drawn == sample_pos(WORDNET, "noun", 8, seed=3)
    assert drawn != sample_pos(WORDNET, "noun", 8, seed=4)
    assert len({s.headword for s in drawn}) == 8
    assert all(s.pos == "n" and s.definition and fits(gloss_item(s)) for s in drawn)
    with pytest.raises(HFTError, match="usable noun synsets, 1000 asked"):
        sample_pos(WORDNET, "noun", 1000, seed=3)


def test_missing_wordnet_one_line(tmp_path):
    with pytest.raises(HFTError) as err:
        find_wordnet(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "apt-get install wordnet-base" in msg and "data." in msg


def test_cli_missing_wordnet(tmp_path, monkeypatch, capsys):
    from hft_bench.evidence import __main__ as cli
    from hft_bench.evidence import corpus

    monkeypatch.setattr(corpus, "WORDNET_DIR", tmp_path)
    assert cli.main(["--base"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: WordNet data not found") and "wordnet-base" in err[0]
