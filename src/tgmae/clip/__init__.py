"""tgmae.clip: the CLIP that text-guided masking scores patches with (`features`: loading,
text embeddings, per-patch features; `data`: the synthetic set's split ids). Submodules are
imported on use; the CLIP the study trains lives in `tgmae.study.clip`.
"""
