"""`tgmae probe -c CONFIG.yaml model.pretrained=PATH [section.key=value ...]`: a frozen-backbone
probe under MAE's linear-probe recipe, the YAML and the overrides (`tgmae.evaluate.probe`):
`eval.probe=linear` (default), `knn` (DINO's weighted k-NN) or `attentive` (V-JEPA's). The
encoder's architecture (preset, patch, tubelet, heads) is its weights' for each model key -c and
the overrides leave unset."""

from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str]) -> int:
    from tgmae.commands.args import parse_run_args, say
    from tgmae.evaluate import probe as lib
    from tgmae.evaluate.metrics import left_out_text, topk_text
    from tgmae.evaluate.recipes import PROBE_RECIPE

    cfg, args = parse_run_args("probe", argv, description=lib.__doc__, base=PROBE_RECIPE)
    from tgmae.evaluate.multiview import with_run_settings
    from tgmae.evaluate.probes import run_probe

    cfg = with_run_settings(cfg, args.given, "probed")  # data keys left unset: model.pretrained's run's
    result = run_probe(cfg, given=args.given)  # model keys left unset: model.pretrained's weights fix them
    say(f"run directory: {result.output_dir}")
    left_out = left_out_text(result.val_left_out, result.val_videos, "val", "probe_results.json")
    if cfg.eval.probe == "knn":
        lines = [f"k-NN probe k={k}: {topk_text(r.top1, r.top5)}" for k, r in result.by_k.items()]
    else:
        lines = [f"{cfg.eval.probe} probe {topk_text(result.top1, result.top5)}  (best top-1 {result.best_top1:.4f})"]
    lines[-1] += f"; {left_out}" if left_out else ""  # the final line: what the scores leave out
    say("\n".join(lines))
    return 0
