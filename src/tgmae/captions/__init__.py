"""Captions and their text embeddings (paper section 3.2 and Table 6).

- `store`: the caption store (JSONL: video_id, captions, source, model), reading, writing,
  torn-tail handling, merging sources.
- `provider`: `CaptionProvider`, what the Dataset draws one caption (id + embedding) from.
- `captioner` + `run`: `tgmae caption`, keyframe captioning with any transformers image-to-text
  model, sharded (`shard`), resumable; also oracle / vision-free / combined stores.
- `sources` + `describe`: oracle captions, CuPL-style vision-free class descriptions
  (`tgmae describe-classes`, an OpenAI-compatible chat endpoint).
- `embed`: frozen CLIP text embeddings and their safetensors cache (`tgmae embed-captions`).
- `tiny`: tiny random BLIP/CLIP/word encoders (tests, the study); loading by hub id or path
  with a clear offline message is `tgmae.hub`.

Only `store` and `provider` are imported here; the rest load transformers when used.
"""

from tgmae.captions.provider import CaptionProvider
from tgmae.captions.store import CaptionRecord, CaptionStoreError, merge_stores, read_store, write_store

__all__ = ["CaptionProvider", "CaptionRecord", "CaptionStoreError", "merge_stores", "read_store", "write_store"]
