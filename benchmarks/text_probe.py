"""Does a text space carry the action? The text probe of issue 15 on a synthetic set.

For each text encoder: a logistic probe of the action from the embeddings of the training
videos' captions, scored on the validation videos' captions (`tgmae.study.attributes.
text_action_probe`), and the cosine of the class prompts "a video of move left." / "... move
right." (and the largest cosine between any two class prompts). Bag of words is the reference.

    PYTHONPATH=src python benchmarks/text_probe.py --root runs/study/data \\
        --model runs/study/clip [--model OTHER ...] [--random-bert] [--json out.json]

`--random-bert` adds `tgmae.captions.tiny.save_word_encoder` (a randomly initialised 2-layer
BERT, word-level tokenizer on the captions and class prompts, mean pooling; the study's
`text_model: words`), loaded through `captions.text_model`'s path (`TextEmbedder`): a separate
text encoder that needs no download.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch


def prompt_cosines(embed, classes: list[str]) -> dict[str, float]:
    e = torch.nn.functional.normalize(embed([f"a video of {c}." for c in classes]).float(), dim=-1)
    sim = e @ e.t()
    out = {"max_between_classes": float(sim.masked_fill(torch.eye(len(classes), dtype=torch.bool), -2).max())}
    if "move left" in classes and "move right" in classes:
        out["left_right"] = float(sim[classes.index("move left"), classes.index("move right")])
    return out


def main(argv=None) -> int:
    from tgmae.captions.embed import TextEmbedder
    from tgmae.captions.store import read_store
    from tgmae.study.attributes import bag_of_words, text_action_probe

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="synthetic set (tgmae synth / the study's data folder)")
    p.add_argument("--model", action="append", default=[], help="text encoder name or path (repeatable)")
    p.add_argument("--random-bert", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.root)
    corpus = [c for r in read_store(root / "captions.jsonl").records for c in r.captions]
    classes = json.loads((root / "meta.json").read_text())["classes"]
    encoders = {"bag of words": bag_of_words(corpus)}
    tmp = tempfile.TemporaryDirectory()
    if args.random_bert:
        from tgmae.captions.tiny import save_word_encoder

        path = save_word_encoder(Path(tmp.name) / "words", corpus + [f"a video of {c}." for c in classes])
        encoders["random word encoder (text_model=words)"] = TextEmbedder(str(path))
    for name in args.model:
        encoders[name] = TextEmbedder(name)
    results = {}
    sys.path.insert(0, str(Path(__file__).parent))
    from tgmae.autotune import cpu_info

    print(f"machine: {cpu_info()[0]}; set: {root}")
    for name, embed in encoders.items():
        r = text_action_probe(root, embed)
        r["prompts"] = prompt_cosines(embed, classes)
        results[name] = r
        print(f"{name}: text probe {100 * r['action']:.1f}% ({r['num_val']} held-out captions, "
              f"{r['action_classes']} actions); prompt cosine left/right {r['prompts'].get('left_right', float('nan')):.3f}, "
              f"max {r['prompts']['max_between_classes']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
