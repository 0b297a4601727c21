"""`tgmae export-hf CKPT OUT_DIR [--classifier | --pretraining]`: a transformers directory
(`tgmae.weights.export_hf`)."""

from __future__ import annotations

from typing import Sequence
from tgmae.commands.args import Parser, say


def main(argv: Sequence[str]) -> int:
    from tgmae.weights.export_hf import export_hf

    parser = Parser(prog="tgmae export-hf", description=__doc__)
    parser.add_argument("checkpoint", help="ours (.safetensors, run dir, checkpoint dir), official .pth or HF dir")
    parser.add_argument("out_dir", help="output directory (transformers save_pretrained layout)")
    parser.add_argument("--classifier", action="store_true",
                        help="export a finetuned classifier as VideoMAEForVideoClassification")
    parser.add_argument("--pretraining", action="store_true",
                        help="export the whole pretraining model (encoder + decoder) as VideoMAEForPreTraining")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty OUT_DIR (never one holding a run or the checkpoint)")
    parser.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    parser.add_argument("--num-heads", type=int, help="encoder heads (official .pth of a width no released model has)")
    parser.add_argument("--decoder-heads", type=int, help="decoder heads (--pretraining from such an official .pth)")
    parser.add_argument("--hf-fc-norm-eps", action="store_true",
                        help="--classifier whose fc_norm eps is not HF's fixed 1e-5 (VideoMAE / VideoMAEv2's 1e-6): "
                             "export it with HF's, checked against our logits")
    args = parser.parse_args(list(argv))
    if args.classifier and args.pretraining:
        parser.error("--classifier and --pretraining exclude each other")
    res = export_hf(args.checkpoint, args.out_dir, classifier=args.classifier, verify=not args.no_verify,
                    pretraining=args.pretraining, num_heads=args.num_heads, decoder_heads=args.decoder_heads,
                    overwrite=args.overwrite, hf_fc_norm_eps=args.hf_fc_norm_eps)
    check = "" if res.max_abs_diff is None else f" (max abs diff vs ours {res.max_abs_diff:.2e})"
    say(f"wrote {res.hf_class} to {res.out_dir}{check}")
    return 0
