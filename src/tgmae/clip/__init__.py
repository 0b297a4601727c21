"""tgmae.clip: the CLIP that text-guided masking scores patches with.

- `features`: `load_clip` (a transformers CLIPModel by hub id or path -> `ClipBundle`),
  `embed_texts` (L2-normalised projected text embeddings), `ClipPatchScorer` (dense / faithful
  per-patch features and caption-patch cosine maps) and frame conversions.
- `data`: `read_split_ids`, the synthetic set's split ids.

The small CLIP the study trains (`tgmae train-clip`) lives with the study: `tgmae.study.clip`.
Used by masking (TGM), the study and the mask figures. Submodules are imported on use, so
importing the package costs nothing (transformers loads when a CLIP does).
"""
