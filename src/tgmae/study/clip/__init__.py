"""tgmae.study.clip: the small CLIP the study trains on the synthetic set (`tgmae train-clip`).

- `train`: the trainer (written as a transformers CLIPModel folder, `tgmae.clip.features`
  loads it like a public CLIP);
- `data`: window/caption pairs and short clips cut from the synthetic set;
- `tokenizer`: a byte-level BPE tokenizer learnt on the captions.
"""
