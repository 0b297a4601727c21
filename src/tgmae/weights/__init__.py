"""tgmae.weights: weights on disk - save, load, resolve, convert, export. One `CheckpointError`.

`files` (containers, `resolve_checkpoint`), `checkpoint` (resumable training checkpoints),
`layouts` (official / transformers key layouts <-> ours), `official` (what an official .pth
states and what a conversion assumes), `pretraining`, `sources` (encoder
weights from any checkpoint), `classifier`, `convert`, `export_hf` + `model_card`.
Submodules are imported on use, so importing the package costs nothing.
"""
