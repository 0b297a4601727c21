"""`tgmae finetune -c CONFIG.yaml model.pretrained=PATH [section.key=value ...]`: VideoMAE's recipe
under the YAML and the overrides (`tgmae.evaluate.finetune`), at the clip settings the encoder was
trained with for each data key -c and the overrides leave unset."""

from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str]) -> int:
    from tgmae.commands.args import parse_run_args, say
    from tgmae.evaluate import finetune as lib
    from tgmae.errors import count
    from tgmae.evaluate.metrics import left_out_text, topk_text
    from tgmae.evaluate.recipes import FINETUNE_RECIPE

    cfg, args = parse_run_args("finetune", argv, description=lib.__doc__, base=FINETUNE_RECIPE)
    from tgmae.evaluate.multiview import with_run_settings

    # data keys left unset (the recipe sets none): the clip settings model.pretrained was trained with
    cfg = with_run_settings(cfg, args.given, "finetuned")
    result = lib.finetune(cfg)
    say(f"run directory: {result.output_dir}")
    if result.test is not None:
        t = result.test
        left_out = left_out_text(t.num_unreadable, t.num_videos + t.num_unreadable, "test", "test_results.json")
        say(f"test {topk_text(t.top1, t.top5)}  ({count(t.num_videos, 'video')} x {count(t.num_views, 'view')}"
              + (f"; {left_out})" if left_out else ")"))
    return 0
