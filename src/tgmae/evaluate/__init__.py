"""tgmae.evaluate: downstream evaluation of pretrained encoders (paper sections 4.2-4.7).

- `finetune`: `FinetuneTask` / `finetune()` on the shared loop (`tgmae finetune`), with
  `mixup` (mixup / cutmix with soft targets) and the VideoMAE recipe in `recipes`; the model is
  `tgmae.models.classifier.VideoClassifier`, its weights `tgmae.weights.classifier`.
- `multiview`: T x S view testing, softmax averaged per video (`tgmae evaluate`).
- `probe`: linear probe on cached frozen features (`features`), LARS (`lars`) or L-BFGS logistic
  regression with a cross-validated L2 (`logistic`) (`tgmae probe`).
- `retrieval`: zero-shot video <-> text Recall@K with the contrastive head (`tgmae retrieve`).
- `visualize`: the figures of `tgmae visualize {recon,attention}`.
- `metrics`: pure accuracy and retrieval metrics; `sharded`: DDP-split dataset passes.
Weights on disk (sources, export, convert): `tgmae.weights`; the commands: `tgmae.commands`.
Submodules are imported on use, so importing the package costs nothing.
"""
