"""Synthetic captioned video set: coloured shapes doing labelled actions over moving textures.

`tgmae synth OUT_DIR` (`tgmae.commands.synth`) or `generate_synthetic_dataset(out_dir, ...)`; see
`generate.py` for the file layout and `render.py` for the ground-truth mask definition.
"""

from tgmae.data.synthetic.captions import VERBS, make_captions
from tgmae.data.synthetic.generate import (
    GENERATOR_VERSION,
    SyntheticSetInfo,
    generate_synthetic_dataset,
    stratified_split,
)
from tgmae.data.synthetic.render import RenderedClip, render_scene
from tgmae.data.synthetic.scene import ACTIONS, COLOURS, Scene, Track, sample_scene
from tgmae.data.synthetic.shapes import SHAPES, rasterize

__all__ = [
    "ACTIONS",
    "COLOURS",
    "GENERATOR_VERSION",
    "SHAPES",
    "VERBS",
    "RenderedClip",
    "Scene",
    "SyntheticSetInfo",
    "Track",
    "generate_synthetic_dataset",
    "make_captions",
    "rasterize",
    "render_scene",
    "sample_scene",
    "stratified_split",
]
