"""Captions and their text embeddings (paper section 3.2 and Table 6).

`store` (the JSONL caption store), `provider` (what the Dataset draws a caption from),
`captioner` + `run` + `shard` (`tgmae caption`), `sources` + `describe` (oracle and vision-free
captions), `embed` (cached text embeddings), `tiny` (tiny random models for tests and the study).
Only `store` and `provider` are imported here; the rest load transformers when used.
"""

from tgmae.captions.provider import CaptionProvider
from tgmae.captions.store import CaptionRecord, CaptionStoreError, merge_stores, read_store, write_store

__all__ = ["CaptionProvider", "CaptionRecord", "CaptionStoreError", "merge_stores", "read_store", "write_store"]
