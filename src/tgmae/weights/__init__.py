"""tgmae.weights: weights on disk - save, load, resolve, convert, export. One `CheckpointError`.

- `files`: the containers (safetensors, weights-only torch pickles, transformers directories),
  atomic writes, `resolve_checkpoint` (a user's path -> the file to read), `CheckpointError`.
- `checkpoint`: a training run's resumable checkpoints (`step_N/`, `latest`), the exact resume
  that refuses other settings.
- `layouts`: official VideoMAE and transformers key layouts <-> ours (pure, on state dicts).
- `pretraining`: pretraining models (encoder + decoder) from / to every layout.
- `sources`: encoder (and classifier head) weights from any checkpoint; `classifier`: a
  `VideoClassifier` built from them, saved and loaded.
- `convert` (`tgmae convert`), `export_hf` with `model_card` (`tgmae export-hf`).
Submodules are imported on use, so importing the package costs nothing.
"""
