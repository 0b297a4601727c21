"""tgmae.clip: the CLIP that text-guided masking scores patches with, and the small one we train.

- `features`: `load_clip` (a transformers CLIPModel by hub id or path -> `ClipBundle`),
  `embed_texts` (L2-normalised projected text embeddings), `ClipPatchScorer` (dense / faithful
  per-patch features and caption-patch cosine maps) and frame conversions.
- `train`: `tgmae train-clip`, a small CLIP trained on the synthetic set (written as a
  transformers CLIPModel folder), with `data` (window/caption pairs from the synthetic set) and
  `tokenizer` (a word-level tokenizer trained on the captions).

Used by masking (TGM), the study and the mask figures. Submodules are imported on use, so
importing the package costs nothing (transformers loads when a CLIP does).
"""
