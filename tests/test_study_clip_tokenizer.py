"""The study CLIP's tokenizer: the same captions give the same tokenizer in every process."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
from tgmae.study.clip.tokenizer import train_clip_tokenizer
texts = ["a red circle moves left.", "a blue square grows.", "a green triangle moves up quickly.",
         "the small yellow star bounces.", "a red square gets smaller."] * 3
tok = train_clip_tokenizer(texts, vocab_size=600)
print(json.dumps({"vocab": tok.get_vocab(), "ids": tok("a red star moves left.")["input_ids"]}))
"""


def _train(hash_seed: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed,
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_same_captions_same_token_ids_in_every_process():
    # tokenizers' BPE trainer broke merge ties by ids assigned in hash-map order: three processes
    # gave three vocabularies (huggingface/tokenizers#1794); our learner breaks ties by the pair
    runs = [_train(seed) for seed in ("0", "1", "2")]
    assert runs[0] == runs[1] == runs[2]
    vocab = runs[0]["vocab"]
    assert vocab["<|startoftext|>"] == 0 and vocab["<|endoftext|>"] == 1
    assert sorted(vocab.values()) == list(range(len(vocab)))  # dense ids, no holes
    assert runs[0]["ids"][0] == 0 and runs[0]["ids"][-1] == 1


def test_renumbered_tokenizer_round_trips_captions():
    from tgmae.study.clip.tokenizer import train_clip_tokenizer

    texts = ["a red circle moves left.", "a blue square grows.", "an orange hexagon flickers."] * 4
    tok = train_clip_tokenizer(texts, vocab_size=600)
    for text in texts[:3] + ["a purple zigzag (unseen words) 42"]:
        ids = tok(text)["input_ids"]
        # CLIP's decoder ends every word with a space ("left ."): compare without spaces
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")
    # merges learnt from the captions are used: a frequent word is one token, not its bytes
    assert len(tok("circle")["input_ids"]) == 3


def test_bpe_merges_most_frequent_pair_first_ties_by_pair():
    from collections import Counter

    from tgmae.study.clip.tokenizer import learn_bpe_merges

    # "ab" x3 beats "cd" x2; then "cd" and "ef" tie at 2: the smaller pair comes first
    merges = learn_bpe_merges(Counter({"ab": 3, "cd": 2, "ef": 2, "abab": 0}), 10)
    assert merges[:3] == [("a", "b</w>"), ("c", "d</w>"), ("e", "f</w>")]
    # the count-0 word adds nothing; every merge joins symbols present at that step
    assert learn_bpe_merges(Counter({"aaa": 1}), 10) == [("a", "a"), ("aa", "a</w>")]
