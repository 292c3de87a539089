"""Parity with torchvision's own RetinaNet: same weights, same images, the same detections.

Run by hand, never by CI (torchvision cannot be a dependency: its compiled ops need CUDA libraries;
``../shared/peers/tv_shim.py`` makes it run on a CPU-only torch)::

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.13.0 numpy pillow
    /tmp/tvenv/bin/pip install --no-deps torchvision==0.28.0 && /tmp/tvenv/bin/pip install -e .
    /tmp/tvenv/bin/python tools/torchvision_parity.py --peers ../shared/peers IMAGE ... [--fixtures DIR]

For v1 (``retinanet_resnet50_fpn``) and v2 (``retinanet_resnet50_fpn_v2``) it builds torchvision's model
as its COCO files are built (frozen BatchNorm, 91 classes), fills every tensor with
:func:`seeded_state_dict` (seeded, with the classification bias raised so that hundreds of boxes pass
the 0.05 threshold), saves the state dict in torchvision's current key layout, its old one (v1, as the
published file) and wrapped as ``{"model": ...}``, and checks that torchvision's loader accepts each.
Then, image pairs of different sizes and aspect ratios go through torchvision's model and through ours
(``Predictor(FILE, config=PRESET)``, BN folded, and the unfused model), and every detection is compared:
boxes within 0.05 px, scores within 1e-4, the same labels in the same order.

``--fixtures DIR`` also writes what ``tests/test_torchvision.py`` checks without torchvision: the key and
shape tables of both models, torchvision's detections on two small images at 320 px and its P6 / P7
anchors for that batch (``--fixtures-only``: just that).
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

PRESETS = {"v1": "torchvision_retinanet_resnet50_fpn", "v2": "torchvision_retinanet_resnet50_fpn_v2"}
HEAD_STD = {"v1": 0.15, "v2": 0.04}  # logits vary by ~0.7 from place to place in both
BOX_TOL, SCORE_TOL = 0.05, 1e-4
TIE_TOL = 1e-6  # scores this close are equal up to the float rounding of two implementations
CLS_BIAS = -1.5  # sigmoid 0.18: far above the 0.05 threshold, so every level fills its top-1000


def seeded_state_dict(shapes: dict[str, Sequence[int]], seed: int, head_std: float) -> dict[str, torch.Tensor]:
    """A detector's weights from names and shapes alone (so a test can rebuild them without torchvision):
    every tensor drawn from its own generator seeded by ``seed`` and the key's CRC32; convs scaled to
    keep activations finite through 50 layers of frozen BatchNorm and the logits varying from place to
    place (``head_std``, per model: few near-equal scores, none saturated), the classification bias
    raised."""
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        shape = tuple(int(s) for s in shape)
        if key.endswith("num_batches_tracked"):
            t = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("cls_logits.bias"):
            t = CLS_BIAS + 0.5 * torch.randn(shape, generator=g)
        elif key.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and key.endswith("weight"):  # BatchNorm / GroupNorm scale
            t = 0.6 + 0.2 * torch.rand(shape, generator=g)
        elif len(shape) == 1:  # biases
            t = 0.05 * torch.randn(shape, generator=g)
        else:  # convs: unit gain inside the network, head_std for the two output layers
            std = head_std if ("cls_logits" in key or "bbox_reg" in key) else int(np.prod(shape[1:])) ** -0.5
            t = std * torch.randn(shape, generator=g)
        out[key] = t
    return out


def old_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's current RetinaNet v1 keys -> its old ones (the layout of the published v1 file)."""
    import re

    out = {}
    for k, v in sd.items():
        k = re.sub(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.0\.", r"\1.", k)
        m = re.match(r"^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.0\.(weight|bias)$", k)
        if m:
            k = f"{m[1]}.{2 * int(m[2])}.{m[3]}"
        out[k] = v
    return out


def build_torchvision(version: str, min_size: int, max_size: int):
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.retinanet import (
        RetinaNet,
        RetinaNetHead,
        _default_anchorgen,
    )
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    extra = LastLevelP6P7(256, 256) if version == "v1" else LastLevelP6P7(2048, 256)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=extra)
    anchors = _default_anchorgen()
    kw: dict[str, Any] = {"min_size": min_size, "max_size": max_size}
    if version == "v2":
        from functools import partial

        head = RetinaNetHead(256, anchors.num_anchors_per_location()[0], 91, norm_layer=partial(torch.nn.GroupNorm, 32))
        head.regression_head._loss_type = "giou"
        kw["head"] = head
    return RetinaNet(backbone, 91, anchor_generator=anchors, **kw).eval()


def read_rgb(path: Path) -> np.ndarray:
    from retinanet.data.image_io import load_image

    return load_image(path)


def as_float(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)


def first_difference(expected: dict, det: dict, swap_tol: float, limit: int = 300) -> str:
    """``""`` when ``det`` has torchvision's detections ``expected`` (the first ``limit``): the same
    labels, boxes within BOX_TOL, scores within SCORE_TOL, in the same order up to swaps among
    detections whose scores are within ``swap_tol`` (equal scores have no order); else what differs."""
    e_boxes, e_scores, e_labels = (torch.as_tensor(expected[k]) for k in ("boxes", "scores", "labels"))
    n = min(limit, len(e_scores))
    if len(det["scores"]) < n:
        return f"{len(det['scores'])} detections, torchvision has at least {n}"
    boxes, scores, labels = det["boxes"][:n].double(), det["scores"][:n].double(), det["labels"][:n]
    e_boxes, e_scores = e_boxes[:n].double(), e_scores[:n].double()
    for i in range(n):
        near = [i] + ((scores - e_scores[i]).abs() <= swap_tol).nonzero().flatten().tolist()
        if not any(
            labels[j] == e_labels[i]
            and (boxes[j] - e_boxes[i]).abs().max() <= BOX_TOL
            and abs(scores[j] - e_scores[i]) <= SCORE_TOL
            for j in near
        ):
            return f"torchvision's detection {i} (label {int(e_labels[i])}, score {float(e_scores[i]):.7f}) not found"
    return ""


def compare(tv: dict, ours: dict) -> dict[str, Any]:
    n_tv, n_ours = len(tv["scores"]), len(ours["scores"])
    n = min(n_tv, n_ours)
    box = (tv["boxes"][:n] - ours["boxes"][:n]).abs().max().item() if n else 0.0
    score = (tv["scores"][:n] - ours["scores"][:n]).abs().max().item() if n else 0.0
    labels = int((tv["labels"][:n] != ours["labels"][:n]).sum())
    in_order = n_tv == n_ours and box <= BOX_TOL and score <= SCORE_TOL and labels == 0
    ties = int((tv["scores"][1:n] == tv["scores"][: n - 1]).sum())
    diff = first_difference(tv, ours, swap_tol=TIE_TOL) if n_tv == n_ours else "counts differ"
    return {
        "n_tv": n_tv,
        "n_ours": n_ours,
        "max_score_diff": score,
        "max_box_diff": box,  # position by position: large where equal scores sit in another order
        "in_order": in_order,
        "equal_scores_in_tv": ties,
        "same_up_to_order_of_equal_scores": diff == "",
        "ok": in_order or diff == "",
        "diff": diff,
    }


def detections_json(det: dict, limit: int) -> dict[str, list]:
    return {
        "boxes": [[round(float(v), 4) for v in b] for b in det["boxes"][:limit].tolist()],
        "scores": [round(float(s), 7) for s in det["scores"][:limit].tolist()],
        "labels": [int(v) for v in det["labels"][:limit].tolist()],
    }


def run(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(args.peers).resolve()))
    import tv_shim

    tv_shim.install()
    from retinanet import Predictor
    from retinanet.config import load_config
    from retinanet.inference.predictor import load_detector

    torch.set_grad_enabled(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = [read_rgb(Path(p)) for p in args.images]
    pairs = [images[i : i + 2] for i in range(0, len(images), 2)]
    report: dict[str, Any] = {"images": [list(im.shape[:2]) for im in images], "runs": []}
    all_ok = True
    for version, preset in PRESETS.items():
        tv = build_torchvision(version, 800, 1333)
        sd = seeded_state_dict({k: v.shape for k, v in tv.state_dict().items()}, args.seed, HEAD_STD[version])
        tv.load_state_dict(sd)
        files = {"current": out / f"{version}_current.pth", "wrapped": out / f"{version}_wrapped.pth"}
        torch.save(sd, files["current"])
        torch.save({"model": sd, "epoch": 0}, files["wrapped"])
        if version == "v1":
            files["old"] = out / "v1_old.pth"
            torch.save(old_layout(sd), files["old"])
            check = build_torchvision(version, 800, 1333)
            check.load_state_dict(torch.load(files["old"], weights_only=True))  # torchvision renames on load
            assert all(torch.equal(a, b) for a, b in zip(check.state_dict().values(), tv.state_dict().values()))
        if args.fixtures:
            write_fixtures(Path(args.fixtures), version, tv, sd, args)
        if args.fixtures_only:
            continue
        tv_dets = [d for pair in pairs for d in tv([as_float(im) for im in pair])]
        for layout, path in files.items():
            pred = Predictor(path, config=preset, device="cpu")
            fused = list(pred.predict_many(images, batch_size=2))
            det = load_detector(path, config=preset, device="cpu")
            unfused = []
            for pair in pairs:
                x = [pred.transforms(im, {"boxes": torch.zeros(0, 4)})[0] for im in pair]
                unfused += det.model(x, output_sizes=[im.shape[:2] for im in pair])
            for i, (t, f, u) in enumerate(zip(tv_dets, fused, unfused)):
                for kind, ours in (("predictor (BN folded)", f), ("model", u)):
                    row = {"version": version, "layout": layout, "path": kind, "image": i, **compare(t, ours)}
                    all_ok &= row["ok"]
                    report["runs"].append(row)
                    print(json.dumps(row))
    (out / "parity.json").write_text(json.dumps(report, indent=1))
    print("PARITY", "OK" if all_ok else "FAILED", f"({len(report['runs'])} comparisons)")
    _ = load_config  # the presets are read by Predictor / load_detector
    return 0 if all_ok else 1


def write_fixtures(folder: Path, version: str, tv, sd: dict, args: argparse.Namespace) -> None:
    """Key/shape tables and torchvision's detections at 320 px on the two fixture images."""
    folder.mkdir(parents=True, exist_ok=True)
    small = build_torchvision(version, 320, 512)
    small.load_state_dict(sd)
    imgs = [read_rgb(folder / name) for name in FIXTURE_IMAGES]
    dets = small([as_float(im) for im in imgs])
    batch, _ = small.transform([as_float(im) for im in imgs])
    features = list(small.backbone(batch.tensors).values())
    anchors = small.anchor_generator(batch, features)[0].split([f.shape[-2] * f.shape[-1] * 9 for f in features])
    data = {
        "torchvision": "0.28.0",
        "seed": args.seed,
        "head_std": HEAD_STD[version],
        "min_size": 320,
        "max_size": 512,
        "images": FIXTURE_IMAGES,
        "keys": {k: list(v.shape) for k, v in tv.state_dict().items()},
        "detections": [detections_json(d, 300) for d in dets],
        "padded_size": list(batch.tensors.shape[-2:]),
        "anchors_p6_p7": [a.tolist() for a in anchors[3:]],  # strides from the padded size: 480 // 8 = 60
    }
    (folder / f"retinanet_{version}.json").write_text(json.dumps(data, separators=(",", ":")))


FIXTURE_IMAGES = ["chelsea_small.png", "coffee_small.png"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", help="RGB photos (pairs are batched together)")
    p.add_argument("--peers", default="../shared/peers", help="folder with tv_shim.py")
    p.add_argument("--out", default="/tmp/tv_parity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixtures", help="also write the CI fixtures to this folder")
    p.add_argument("--fixtures-only", action="store_true", help="write the fixtures, skip the comparisons")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
