"""The export check: an exported file must give the eager model's detections.

- :func:`check_examples` ``(height, width, input_dtype, dynamic) -> [(images [B, 3, H, W], image_sizes
  [B, 2])]``: random RGB images, the export size at batch 1 and, when the file is dynamic, a larger,
  non-square size at batch 2 whose first image is smaller than the batch (exercises ``image_sizes``).
- :func:`compare_detections` ``(run, model, what, examples, limit) -> CheckResult``: runs both on every
  example (the eager model on each image cropped to its size) and raises :class:`ExportError` unless the
  number, labels and order of the detections are the same and boxes and scores are within
  :data:`BOX_ATOL` px and :data:`SCORE_ATOL`; detections whose scores are within SCORE_ATOL of each
  other may trade places (counted). ``run(images, image_sizes)`` returns the eager model's list of dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from retinanet.export.common import ExportError

__all__ = ["BOX_ATOL", "SCORE_ATOL", "CheckResult", "check_examples", "compare_detections"]

BOX_ATOL, SCORE_ATOL = 0.01, 1e-4  # what the check accepts (px, score)
Example = Tuple[Tensor, Tensor]


@dataclass
class CheckResult:
    """Largest deviations from the eager model over all examples, and what was run."""

    box: float = 0.0  # px, in the pixels of the input image
    score: float = 0.0
    detections: int = 0
    reordered: int = 0  # detections in another place among near-equal scores (see compare_detections)
    shapes: List[Tuple[int, int, int]] = field(default_factory=list)  # (batch, height, width) per example

    def describe(self) -> str:
        runs = ", ".join(f"{b} x {h}x{w}" for b, h, w in self.shapes)
        moved = f", {self.reordered} in another order among scores within {SCORE_ATOL}" if self.reordered else ""
        return (
            f"same {self.detections} detections as the eager model on random images ({runs}{moved}); boxes "
            f"within {self.box:.2g} px, scores within {self.score:.2g}"
        )


def check_examples(height: int, width: int, input_dtype: torch.dtype, dynamic: bool = True) -> List[Example]:
    """Check inputs (module docstring); ``input_dtype`` uint8 (0-255) or float32 (0-1)."""
    g = torch.Generator().manual_seed(0)

    def images(b: int, h: int, w: int) -> Tensor:
        x = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
        return x if input_dtype == torch.uint8 else torch.rand(b, 3, h, w, generator=g)

    out = [(images(1, height, width), torch.tensor([[height, width]]))]
    if dynamic:
        h2, w2 = height + 40, width + 72
        two = images(2, h2, w2)
        two[0, :, h2 - 24 :, :] = 0
        two[0, :, :, w2 - 16 :] = 0
        out.append((two, torch.tensor([[h2 - 24, w2 - 16], [h2, w2]])))
    return out


def _match(g: Dict[str, Tensor], e: Dict[str, Tensor], limit: int) -> Optional[Tensor]:
    """For each eager detection, the index of the same detection in ``g`` (same label, box within
    BOX_ATOL, score within SCORE_ATOL; the nearest position first), or -1 for one cut off at the limit of
    ``limit`` detections among near-equal scores; None when a detection has no counterpart."""
    gb, gs, gl = g["boxes"].float(), g["scores"].float(), g["labels"].to(torch.int64)
    eb, es, el = e["boxes"].float(), e["scores"].float(), e["labels"]
    close = (gl[None, :] == el[:, None]) & ((gs[None, :] - es[:, None]).abs() <= SCORE_ATOL)
    close &= (es[None, :] - es[:, None]).abs() <= SCORE_ATOL  # places trade only among near-equal scores
    close &= (gb[None, :, :] - eb[:, None, :]).abs().amax(dim=-1) <= BOX_ATOL
    idx = torch.full((el.numel(),), -1, dtype=torch.int64)
    used = torch.zeros(gl.numel(), dtype=torch.bool)
    for k in range(el.numel()):
        cand = (close[k] & ~used).nonzero()[:, 0]
        if cand.numel():
            m = cand[(cand - k).abs().argmin()]
            idx[k], used[m] = m, True
    if bool((idx < 0).any()):  # only the last places of a full list may hold other near-equal detections
        if el.numel() != limit or gl.numel() != limit:
            return None
        floor = float(torch.minimum(es.min(), gs.min())) + SCORE_ATOL
        if bool((es[idx < 0] > floor).any() or (gs[~used] > floor).any()):
            return None
    return idx


def compare_detections(
    run: Callable[[Tensor, Tensor], List[Dict[str, Tensor]]],
    model: nn.Module,
    what: str,
    examples: List[Example],
    limit: int = 0,
) -> CheckResult:
    """Deviations of ``run`` from the eager ``model`` (module docstring); ExportError on a difference.

    Detections whose scores differ by less than SCORE_ATOL may come in another order (float rounding of
    another runtime can swap them), and with ``limit`` (the model's detections per image) a full list
    may end with other detections of such near-equal scores; both are counted in ``reordered``."""
    res = CheckResult()
    for images, sizes in examples:
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        res.shapes.append((int(b), int(h), int(w)))
        eager_in = [im[:, : int(s[0]), : int(s[1])] for im, s in zip(images, sizes)]
        with torch.no_grad():
            want = model(eager_in)
            got = run(images, sizes)
        if len(got) != len(want):
            raise ExportError(f"{what}: {len(got)} results for a batch of {len(want)} images")
        for i, (g, e) in enumerate(zip(got, want)):
            _compare_image(g, e, f"{what}: image {i} of a {b} x {h}x{w} batch", limit, res)
    return res


def _compare_image(g: Dict[str, Tensor], e: Dict[str, Tensor], where: str, limit: int, res: CheckResult) -> None:
    gl, el = g["labels"].to(torch.int64), e["labels"]
    if gl.shape != el.shape:
        raise ExportError(f"{where}: {gl.numel()} detections vs {el.numel()} from the eager model")
    res.detections += int(el.numel())
    if el.numel() == 0:
        return
    box = float((g["boxes"].float() - e["boxes"]).abs().max())
    score = float((g["scores"].float() - e["scores"]).abs().max())
    if torch.equal(gl, el) and box <= BOX_ATOL and score <= SCORE_ATOL:
        res.box, res.score = max(res.box, box), max(res.score, score)
        return
    idx = _match(g, e, limit)
    if idx is None:
        if torch.equal(gl, el):
            raise ExportError(
                f"{where}: boxes differ by up to {box:.3g} px and scores by {score:.3g} from the eager model "
                f"(allowed {BOX_ATOL} px, {SCORE_ATOL})"
            )
        k = int((gl != el).nonzero()[0, 0])
        raise ExportError(
            f"{where}: detection {k} has label {int(gl[k])}, the eager model's {int(el[k])} (score "
            f"{float(e['scores'][k]):.6g}), and no reordering of near-equal scores explains it"
        )
    pairs = idx >= 0
    res.reordered += int((idx != torch.arange(el.numel())).sum())
    gb, gs = g["boxes"].float()[idx[pairs]], g["scores"].float()[idx[pairs]]
    res.box = max(res.box, float((gb - e["boxes"][pairs]).abs().max()))
    res.score = max(res.score, float((gs - e["scores"][pairs]).abs().max()))
