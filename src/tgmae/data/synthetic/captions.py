"""Template captions: each names the acting object (colour + shape) and its action.

Distractors are mentioned only generically ("another shape"), never by colour or shape, so the
text points at exactly one object in the frame.
"""

from __future__ import annotations

import numpy as np

from tgmae.data.synthetic.background import BACKGROUND_WORDS
from tgmae.data.synthetic.scene import Scene
from tgmae.data.synthetic.shapes import SHAPES

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


# The sentence frames a class description uses: those of TEMPLATES that name neither the background
# nor the scene's context, which a description of the class alone cannot know.
DESCRIPTION_TEMPLATES: tuple[str, ...] = tuple(t for t in TEMPLATES if "{bg}" not in t and "{context}" not in t)


def class_descriptions() -> dict[str, list[str]]:
    """Vision-free descriptions of every action class (class -> texts, the `tgmae describe-classes`
    format): each of the class's verb phrases about each of the set's shapes in each colour-free
    sentence frame ("a circle slides downward", "a video of a star that sinks down", ...). Written
    from the class definitions and the set's object names alone, as a language model writes them
    for real classes (paper Table 6a), in the captions' words: zero-shot retrieval averages them per
    class (`eval.class_descriptions`), where a class name's own words ("move", "grow", "blink")
    occur in no caption (docs/study.md). Every shape is named because the captions hold no generic
    object word ("shape" occurs only with distractors)."""
    return {action: [t.format(a=_article(shape), obj=shape, verb=v) for t in DESCRIPTION_TEMPLATES for v in verbs
                     for shape in SHAPES]
            for action, verbs in VERBS.items()}


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
