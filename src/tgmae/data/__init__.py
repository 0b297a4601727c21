"""tgmae.data: everything between a video file on disk and a batch tensor.

- `annotations` / `formats`: each dataset's shipped label files -> `VideoRecord`s + class names
  (`load_annotations(format, root, annotations, split, subset)`).
- `video`: PyAV / frame-folder access (`probe_video`, `read_frames`, `read_motion_vectors`,
  `VideoReader`, `video_verdict`, `write_video`); `frame_index`: which frames a file presents
  (one decode, cached) and its verdict; `frame_folder`: folders of frame images.
- `sampling`: which frames make a clip (dense, TSN, multi-view).
- `transforms`: crop boxes and clip augmentation on tensors, returning `CropParams`.
- `mask_interface`: what the dataset hands a mask generator (`MaskContext`, `CropParams`) and
  the generator protocol and mask helpers `tgmae.masking` implements.
- `dataset`: `VideoDataset`, `MultiViewDataset`, `build_dataset` (sample contract in
  docs/CONTRACTS.md).
- `check`: `tgmae data check`.
- `synthetic`: the synthetic captioned video set.

Submodules are imported on use, so `import tgmae.data` stays cheap.
"""
