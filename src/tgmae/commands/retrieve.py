"""`tgmae retrieve -c CONFIG.yaml model.pretrained=CKPT`: zero-shot video <-> text Recall@K with the
contrastive head (`tgmae.evaluate.retrieval`); the model's architecture (preset, patch, tubelet, heads)
is its weights' for each model key -c and the overrides leave unset."""

from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str]) -> int:
    from tgmae.commands.args import parse_run_args, say
    from tgmae.evaluate import retrieval as lib

    cfg, args = parse_run_args("retrieve", argv, description=lib.__doc__)
    from tgmae.evaluate.multiview import with_run_settings

    cfg = with_run_settings(cfg, args.given, "tested")  # data keys left unset: model.pretrained's run's
    r = lib.evaluate_retrieval(cfg, given=args.given)  # model keys left unset: model.pretrained's weights fix them
    say(f"{r.mode}: {r.sizes_text()}")  # the gallery each way, not only the texts with a video
    for name, direction in (("video->text", "video_to_text"), ("text->video", "text_to_video")):
        chance = lib.chance_text(r, direction)
        say(f"{name} " + "  ".join(f"R@{k} {100 * v:.1f}" for k, v in getattr(r, direction).items())
              + (f"  ({chance})" if chance else ""))
    return 0
