"""Template captions: each names the acting object (colour + shape) and its action.

Distractors are mentioned only generically ("another shape"), never by colour or shape, so the
text points at exactly one object in the frame.
"""

from __future__ import annotations

import numpy as np

from tgmae.data.synthetic.background import BACKGROUND_WORDS
from tgmae.data.synthetic.scene import Scene

# Verb phrases per action. Every phrase of a "move X" action contains the word X, every rotation
# phrase its direction, so a caption can never be read as a different class.
VERBS: dict[str, tuple[str, ...]] = {
    "move left": ("moves to the left", "slides left", "travels left across the frame", "glides to the left"),
    "move right": ("moves to the right", "slides right", "travels right across the frame", "glides to the right"),
    "move up": ("moves up", "slides upward", "travels up the frame", "rises up"),
    "move down": ("moves down", "slides downward", "travels down the frame", "sinks down"),
    "grow": ("grows", "grows larger", "expands", "gets bigger"),
    "shrink": ("shrinks", "shrinks in size", "contracts", "gets smaller"),
    "rotate clockwise": ("rotates clockwise", "spins clockwise", "turns clockwise"),
    "rotate counterclockwise": ("rotates counterclockwise", "spins counterclockwise", "turns anticlockwise"),
    "blink": ("blinks", "fades in and out", "flickers on and off", "blinks on and off"),
    "bounce": ("bounces", "bounces up and down", "hops up and down", "keeps bouncing"),
}

# Sentence frames. {a}: "a"/"an" for the object, {obj}: "red circle", {verb}: a verb phrase,
# {bg}: background adjective, {context}: what else happens in the scene.
TEMPLATES: tuple[str, ...] = (
    "{a} {obj} {verb}",
    "the {obj} {verb} over a {bg} background",
    "{a} {obj} {verb} while {context}",
    "a video of {a} {obj} that {verb}",
    "in this clip the {obj} {verb}",
    "on a {bg} background {a} {obj} {verb}",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _context(scene: Scene) -> str:
    n = len(scene.tracks) - 1
    if n == 1:
        return "another shape wanders around"
    if n > 1:
        return f"{n} other shapes wander around"
    if scene.jitter:
        return "the camera shakes"
    return "the background scrolls by"


def make_captions(scene: Scene, rng: np.random.Generator, count: int = 3) -> list[str]:
    """`count` distinct captions for the scene's acting object and action."""
    actor = scene.actor
    templates = rng.choice(len(TEMPLATES), size=count, replace=False)
    verbs = VERBS[scene.action]
    verb_ids = rng.permutation(len(verbs))
    out = []
    for k, ti in enumerate(templates):
        out.append(
            TEMPLATES[ti].format(
                a=_article(actor.colour),
                obj=actor.name,
                verb=verbs[verb_ids[k % len(verbs)]],
                bg=BACKGROUND_WORDS[scene.background],
                context=_context(scene),
            )
        )
    return out
