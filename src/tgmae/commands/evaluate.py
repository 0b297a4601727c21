"""`tgmae evaluate -c CONFIG.yaml model.pretrained=CLASSIFIER`: the multi-view test of a finetuned
classifier (`tgmae.evaluate.multiview`)."""

from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str]) -> int:
    from tgmae.commands.args import parse_run_args, say
    from tgmae.evaluate import multiview as lib
    from tgmae.errors import count
    from tgmae.evaluate.metrics import left_out_text, topk_text

    cfg, _ = parse_run_args("evaluate", argv, description=lib.__doc__.splitlines()[0])
    result = lib.evaluate_checkpoint(cfg)
    left_out = left_out_text(result.num_unreadable, result.num_videos + result.num_unreadable, "test",
                             "test_results.json")
    say(f"{topk_text(result.top1, result.top5)}  mean class {result.mean_class_accuracy:.4f}  "
          f"({count(result.num_videos, 'video')} x {count(result.num_views, 'view')}"
          + (f"; {left_out})" if left_out else ")"))
    return 0
