"""bf16 inference (``test.amp``, retinanet.inference.precision): the network runs in bfloat16, the
detections come back in float32 and close to the float32 model's, everywhere a model is evaluated."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retinanet.config import ConfigError, load_config
from retinanet.inference.precision import Autocast, with_amp


def _image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(80, 100, 3, generator=g) * 255).to(torch.uint8)


def test_off_is_the_model_itself_and_bad_values_name_the_key():
    model = nn.Identity()
    assert with_amp(model, load_config("mobilenet_v2_cpu")) is model
    with pytest.raises(ConfigError, match="test.amp"):
        load_config("mobilenet_v2_cpu", ["test.amp=fp16"])


def _flat(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.detach().float().flatten()
    parts = out.values() if isinstance(out, dict) else out
    return torch.cat([_flat(v) for v in parts])


def test_predictor_runs_the_network_in_bf16_and_returns_float32_detections(tmp_path):
    from model_factory import make_checkpoint

    from retinanet import Predictor

    ckpt = make_checkpoint(tmp_path / "tiny.pth")
    img = _image().numpy()
    runs = {}
    for name, extra in (("fp32", []), ("bf16", ["test.amp=bf16"])):
        pred = Predictor(ckpt, device="cpu", overrides=extra)
        seen: list[torch.Tensor] = []
        head = next(m for n, m in pred.inference_model.named_modules() if n.endswith("head"))
        handle = head.register_forward_hook(lambda m, i, o: seen.append(o))
        runs[name] = (pred, pred.predict(img), seen[0])
        handle.remove()
    pred, det, head_out = runs["bf16"]
    assert isinstance(pred.inference_model, Autocast) and not pred.inference_model.training
    assert _flat(head_out).numel() and {t.dtype for t in _leaves(head_out)} == {torch.bfloat16}
    assert {t.dtype for t in _leaves(runs["fp32"][2])} == {torch.float32}
    assert det["boxes"].dtype == det["scores"].dtype == torch.float32 and len(det["scores"]) > 0
    # the head's outputs (class logits, box deltas) agree up to bf16 rounding: 8 bits of mantissa
    a, b = _flat(runs["fp32"][2]), _flat(head_out)
    assert ((a - b).abs() <= 0.03 * a.abs() + 0.03).all(), (a - b).abs().max()
    assert not torch.equal(a, b)


def _leaves(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    parts = out.values() if isinstance(out, dict) else out
    return [t for v in parts for t in _leaves(v)]


def test_a_fused_model_under_autocast_still_refuses_training(tmp_path):
    from model_factory import make_checkpoint

    from retinanet import Predictor

    pred = Predictor(make_checkpoint(tmp_path / "tiny.pth"), device="cpu", overrides=["test.amp=bf16"])
    pred.inference_model.eval()
    with pytest.raises(RuntimeError, match="fused for inference"):
        pred.inference_model.train()


def test_cli_eval_with_bf16(tmp_path):
    from data_factory import make_coco
    from model_factory import make_checkpoint

    from retinanet.cli import main
    from retinanet.config import config_from_dict, save_config
    from retinanet.utils.serialization import load_file

    ckpt = make_checkpoint(tmp_path / "tiny.pth")
    images, ann = make_coco(tmp_path / "coco")
    save_config(config_from_dict(load_file(ckpt)["config"]), tmp_path / "cfg.yaml")
    argv = ["eval", str(tmp_path / "cfg.yaml"), f"data.val_images={images}", f"data.val_annotations={ann}"]
    argv += ["test.amp=bf16", "--weights", str(ckpt), "--out", str(tmp_path / "ev"), "--no-progress"]
    assert main(argv) == 0
    assert (tmp_path / "ev" / "metrics.json").exists()
