"""tgmae.evaluate: downstream evaluation of pretrained encoders (paper sections 4.2-4.7).

- `finetune`: `FinetuneTask` / `finetune()` on the shared loop (`tgmae finetune`), with
  `classifier` (`VideoClassifier`: mean pooling + fc_norm + head), `mixup` (mixup / cutmix with
  soft targets) and the VideoMAE recipe in `recipes`.
- `multiview`: T x S view testing, softmax averaged per video (`tgmae evaluate`).
- `probe`: linear probe on cached frozen features (`features`), LARS (`lars`) or L-BFGS logistic
  regression with a cross-validated L2 (`logistic`) (`tgmae probe`).
- `retrieval`: zero-shot video <-> text Recall@K with the contrastive head (`tgmae retrieve`).
- `export_hf`: transformers `VideoMAEModel` / `VideoMAEForVideoClassification` (`tgmae export-hf`).
- `visualize`: `tgmae visualize {recon,attention,masks}`.
- `sources`: encoder weights from ours / official / HF checkpoints and training runs.
- `metrics`: pure accuracy and retrieval metrics; `sharded`: DDP-split dataset passes.
Submodules are imported on use, so importing the package costs nothing.
"""
