"""Figure 4 of the focal-loss paper: how the loss of a trained model spreads over its examples.

The examples are the binary sigmoid classifiers of the anchors (the paper's "windows"):

- a *positive* is the ground-truth class logit of a foreground anchor (one per anchor);
- a *negative* is any of the ``K`` logits of a background anchor (``K`` per anchor).

The other ``K - 1`` logits of foreground anchors and every logit of ignored anchors are left out. For
each gamma, separately for positives and negatives, the focal loss ``(1 - p_t)**gamma * -log(p_t)`` of
every example is sorted from low to high and normalized to sum 1; the curve is the cumulative share of
the loss against the fraction of examples (piecewise linear between ``(i / n, share of the i easiest)``).
alpha would scale all positives (or all negatives) alike, so it drops out of the normalized curves.

- :func:`loss_cdf` ``(pos_logits [P], neg_logits [M], gammas) -> LossCDF``: curves ``[G, points]``
  on ``fractions [points]`` (``linspace(0, 1)``) and the share carried by the hardest 20% / 10% / 1%.
- :func:`collect_logits` runs a model over a loader and returns the two logit arrays (float32).
- :func:`run_loss_cdf` loads a checkpoint, runs it on the validation (or training) images and writes the
  PNG (:func:`retinanet.viz.plots.plot_loss_cdf`) and the JSON.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from retinanet.config import Config
from retinanet.data.build import build_dataset
from retinanet.data.collate import collate
from retinanet.inference.predictor import load_detector
from retinanet.modeling.retinanet import RetinaNet
from retinanet.utils.io import atomic_write_json
from retinanet.viz.plots import plot_loss_cdf

__all__ = ["DEFAULT_GAMMAS", "HARDEST", "LossCDF", "focal_losses", "loss_cdf", "collect_logits", "run_loss_cdf"]

DEFAULT_GAMMAS = (0.0, 0.5, 1.0, 2.0)
HARDEST = (0.2, 0.1, 0.01)  # the headline fractions: share of the loss carried by the hardest examples


def focal_losses(logits: np.ndarray, positive: bool, gamma: float) -> np.ndarray:
    """Focal loss without alpha of each logit (float64): ``-log(p_t) * (1 - p_t)**gamma`` with ``p_t``
    the probability of the true label (1 for ``positive``, 0 otherwise)."""
    z = -np.asarray(logits, np.float64) if positive else np.asarray(logits, np.float64)
    ce = np.logaddexp(0.0, z)  # -log(p_t) = softplus(z)
    return ce if gamma == 0 else np.exp(-gamma * np.logaddexp(0.0, -z)) * ce  # (1 - p_t) = sigmoid(z)


def _cumulative_share(losses: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """The normalized cumulative loss (easiest first) at ``fractions`` of the examples; NaN when there is
    no example or no loss."""
    n = losses.size
    total = float(losses.sum()) if n else 0.0
    if n == 0 or not total > 0 or not math.isfinite(total):
        return np.full(fractions.shape, np.nan)
    c = np.concatenate([[0.0], np.cumsum(np.sort(losses))]) / total
    c[-1] = 1.0
    return np.interp(fractions, np.arange(n + 1) / n, c)


@dataclass
class LossCDF:
    """The curves of :func:`loss_cdf`; arrays are float64, rows follow ``gammas``."""

    gammas: tuple[float, ...]
    fractions: np.ndarray  # [points], 0 .. 1
    positive: np.ndarray  # [G, points] cumulative share of the positive loss
    negative: np.ndarray  # [G, points]
    num_positives: int
    num_negatives: int
    hardest_positive: dict[float, np.ndarray] = field(default_factory=dict)  # fraction -> [G] share
    hardest_negative: dict[float, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: curves and shares keyed by gamma (``"2.0"``), NaN as null."""

        def clean(a: Iterable[float]) -> list[Optional[float]]:
            return [float(v) if math.isfinite(v) else None for v in a]

        def by_gamma(rows: np.ndarray) -> dict[str, Any]:
            return {str(g): clean(r) for g, r in zip(self.gammas, rows)}

        def shares(d: dict[float, np.ndarray]) -> dict[str, Any]:
            return {str(f): dict(zip(map(str, self.gammas), clean(v))) for f, v in d.items()}

        return {
            "gammas": list(self.gammas),
            "num_positives": self.num_positives,
            "num_negatives": self.num_negatives,
            "hardest_negative_share": shares(self.hardest_negative),
            "hardest_positive_share": shares(self.hardest_positive),
            "fractions": clean(self.fractions),
            "positive": by_gamma(self.positive),
            "negative": by_gamma(self.negative),
        }


def loss_cdf(
    pos_logits: Union[np.ndarray, torch.Tensor],
    neg_logits: Union[np.ndarray, torch.Tensor],
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    points: int = 1000,
    hardest: Sequence[float] = HARDEST,
) -> LossCDF:
    """The normalized cumulative focal loss of positives ``[P]`` and negatives ``[M]`` (logits, see the
    module docstring) for each gamma, on ``points`` evenly spaced fractions of the examples, and the
    share of the loss carried by the hardest ``hardest`` fraction of each set."""
    if points < 2:
        raise ValueError(f"loss_cdf: points must be >= 2, got {points}")
    if not gammas or any(not (math.isfinite(g) and g >= 0) for g in gammas):
        raise ValueError(f"loss_cdf: gammas must be finite numbers >= 0, got {list(gammas)}")
    if any(not 0 < f < 1 for f in hardest):
        raise ValueError(f"loss_cdf: hardest fractions must be in (0, 1), got {list(hardest)}")
    pos = np.asarray(pos_logits.cpu() if isinstance(pos_logits, torch.Tensor) else pos_logits).reshape(-1)
    neg = np.asarray(neg_logits.cpu() if isinstance(neg_logits, torch.Tensor) else neg_logits).reshape(-1)
    fractions = np.linspace(0.0, 1.0, points)
    at = np.array([1.0 - f for f in hardest])
    curves: dict[bool, list[np.ndarray]] = {True: [], False: []}
    tails: dict[bool, list[np.ndarray]] = {True: [], False: []}
    for g in gammas:
        for positive, logits in ((True, pos), (False, neg)):
            losses = focal_losses(logits, positive, float(g))
            curves[positive].append(_cumulative_share(losses, fractions))
            tails[positive].append(1.0 - _cumulative_share(losses, at))
    tail = {p: np.stack(tails[p], 1) for p in (True, False)}  # [len(hardest), G]
    return LossCDF(
        gammas=tuple(float(g) for g in gammas),
        fractions=fractions,
        positive=np.stack(curves[True]),
        negative=np.stack(curves[False]),
        num_positives=int(pos.size),
        num_negatives=int(neg.size),
        hardest_positive={float(f): tail[True][i] for i, f in enumerate(hardest)},
        hardest_negative={float(f): tail[False][i] for i, f in enumerate(hardest)},
    )


@torch.no_grad()
def collect_logits(
    model: RetinaNet,
    loader: Iterable[Any],
    device: torch.device,
    max_negatives_per_image: Optional[int] = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative logits (float32 ``[P]``, ``[M]``) of ``model`` on the batches of ``loader``
    (:class:`~retinanet.data.collate.Batch`), anchors matched with the model's own matcher. Negatives
    are subsampled uniformly (seeded) to at most ``max_negatives_per_image`` per image."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    pos_out: list[np.ndarray] = []
    neg_out: list[np.ndarray] = []
    for batch in loader:
        images = [im.to(device) for im in batch.images]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in batch.targets]
        x, _ = model.preprocess(images)
        if model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = model.backbone(x)
        cls_logits, _ = model.head(features)
        anchors = model.anchors_for(features, (int(x.shape[-2]), int(x.shape[-1])))
        cls_targets, _ = model.match(anchors, targets)
        for logits, t in zip(cls_logits.float(), cls_targets):
            fg = t >= 0
            pos_out.append(logits[fg, t[fg]].cpu().numpy())
            neg = logits[t == -1].reshape(-1).cpu()
            if max_negatives_per_image is not None and neg.numel() > max_negatives_per_image:
                neg = neg[torch.randperm(neg.numel(), generator=gen)[:max_negatives_per_image]]
            neg_out.append(neg.numpy())
    empty = np.zeros(0, np.float32)
    return (np.concatenate(pos_out) if pos_out else empty), (np.concatenate(neg_out) if neg_out else empty)


def _split_config(cfg: Config, split: str) -> Config:
    """``cfg`` whose validation data is the ``split`` ("val" or "train") data, with the test transforms."""
    if split == "val":
        return cfg
    if split != "train":
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    out = copy.deepcopy(cfg)
    out.data.val_images, out.data.val_annotations = cfg.data.train_images, cfg.data.train_annotations
    out.data.val_split = cfg.data.train_split
    return out


def run_loss_cdf(
    config: Optional[Union[str, Config]],
    weights: Union[str, Path],
    overrides: Optional[list[str]] = None,
    num_images: Optional[int] = 500,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    out_png: Optional[Union[str, os.PathLike[str]]] = None,
    json_path: Optional[Union[str, os.PathLike[str]]] = None,
    split: str = "val",
    device: str = "auto",
    max_negatives: int = 10_000_000,
    points: int = 1000,
    seed: int = 0,
) -> LossCDF:
    """Figure 4 for the checkpoint ``weights`` (config: ``config`` or the one stored in the file, with
    ``overrides``) on the first ``num_images`` images (None: all) of the ``split`` data at the test size.
    About ``max_negatives`` negatives are kept in all (the paper: ~10^7), spread evenly over the images.
    Writes ``out_png`` and ``json_path`` when given; returns the curves."""
    loaded = load_detector(weights, config, device=device, overrides=overrides)
    cfg = _split_config(loaded.cfg, split)
    dataset = build_dataset(cfg, train=False)
    n = len(dataset) if num_images is None else min(int(num_images), len(dataset))
    if n < 1:
        raise ValueError(f"no images to analyse (num_images={num_images}, {len(dataset)} in the {split} data)")
    loader = DataLoader(
        Subset(dataset, range(n)),
        batch_size=cfg.data.test_batch_size,
        num_workers=min(cfg.data.num_workers, n - 1),
        collate_fn=collate,
    )
    per_image = max(1, math.ceil(max_negatives / n))
    pos, neg = collect_logits(loaded.model, loader, loaded.device, per_image, seed)
    result = loss_cdf(pos, neg, gammas, points)
    if out_png is not None:
        plot_loss_cdf(result.fractions, result.gammas, result.positive, result.negative, out_png)
    if json_path is not None:
        doc = {"weights": str(weights), "split": split, "num_images": n, **result.to_dict()}
        atomic_write_json(Path(json_path), doc, indent=1)
    return result
