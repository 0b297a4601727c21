"""`tgmae evaluate -c CONFIG.yaml model.pretrained=CLASSIFIER`: the multi-view test of a finetuned
classifier (`tgmae.evaluate.multiview`), at its own data settings (frames, image size, and its run's
stride, sampling, mean, std) and architecture (preset, patch, tubelet, heads: its weights') for each
key -c and the overrides leave unset."""

from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str]) -> int:
    from tgmae.commands.args import parse_run_args, say
    from tgmae.evaluate import multiview as lib
    from tgmae.errors import count
    from tgmae.evaluate.metrics import left_out_text, topk_text

    cfg, args = parse_run_args("evaluate", argv, description=lib.__doc__)
    # the classifier's own frames, size, stride... where the user set none (a key set otherwise: a warning)
    result = lib.evaluate_checkpoint(cfg, given=args.given)
    left_out = left_out_text(result.num_unreadable, result.num_videos + result.num_unreadable, "test",
                             "test_results.json")
    say(f"{topk_text(result.top1, result.top5)}  mean class {result.mean_class_accuracy:.4f}  "
          f"({count(result.num_videos, 'video')} x {count(result.num_views, 'view')}"
          + (f"; {left_out})" if left_out else ")"))
    return 0
