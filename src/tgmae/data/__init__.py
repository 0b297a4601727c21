"""tgmae.data: everything between a video file on disk and a batch tensor.

- `annotations`: `VideoRecord`, the shared row helpers and the generic CSV/JSONL reader;
  `formats`: the public datasets' layouts and the entry point over all of them,
  `load_annotations(format, root, annotations, split, subset)` -> records + class names.
- `video`: PyAV / frame-folder access (`probe_video`, `read_frames`, `read_motion_vectors`,
  `VideoReader`, `video_verdict`, `write_video`); `frame_index`: which frames a file presents
  (one decode, cached) and its verdict; `frame_folder`: folders of frame images.
- `sampling`: which frames make a clip (dense, TSN, multi-view).
- `transforms`: crop boxes and clip augmentation on tensors, returning `CropParams`
  (`tgmae.mask_contract`: what the dataset hands a mask generator).
- `dataset`: `VideoDataset`, `MultiViewDataset`, `build_dataset` (sample contract in
  docs/CONTRACTS.md).
- `check`: the dataset check behind `tgmae data check`.
- `synthetic`: the synthetic captioned video set.

Submodules are imported on use, so `import tgmae.data` stays cheap.
"""
