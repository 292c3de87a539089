"""Converting a detector file of torchvision's into a checkpoint of ours, once.

``convert_checkpoint(src, out, config=None) -> (out path, config name)`` reads ``src`` (a torchvision
RetinaNet state dict in its old or current key layout, bare or wrapped as ``{"model": ...}``; read with
``weights_only``), builds the detector of ``config`` (a preset name, YAML file or
:class:`~retinanet.config.Config`; default: the packaged preset whose architecture the file's shapes
fit, e.g. ``torchvision_retinanet_resnet50_fpn``), loads it strictly and writes
``{"model", "config", "class_names", "label_to_category_id", "converted_from"}``: a file that
``retinanet predict / eval / export`` and ``model.weights=`` take without ``--config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from retinanet.config import Config, ConfigError, config_to_dict
from retinanet.inference.predictor import load_detector
from retinanet.modeling.state_dict import canonical_state_dict, describe_state, matching_presets
from retinanet.utils.serialization import load_file, save_file

__all__ = ["convert_checkpoint"]


def _fitting_preset(src: Path) -> str:
    state = load_file(src)
    sd = canonical_state_dict(state, set())
    found = describe_state(sd)
    exact, _ = matching_presets(found)
    if len(exact) != 1:
        shown = ", ".join(f"model.{k}={v}" for k, v in found.items()) or "no detector tensors"
        fits = f"presets {exact}" if exact else "no packaged preset"
        raise ConfigError(f"{src}: {fits} fit(s) this file ({shown}); pass --config (a preset or YAML file)")
    return exact[0]


def convert_checkpoint(
    src: Union[str, Path], out: Union[str, Path], config: Optional[Union[str, Config]] = None
) -> tuple[Path, str]:
    """Write ``src`` as a checkpoint of ours at ``out`` (see the module docstring)."""
    src = Path(src)
    name = config if config is not None else _fitting_preset(src)
    det = load_detector(src, config=name, device="cpu")
    state = {
        "model": det.model.state_dict(),
        "config": config_to_dict(det.cfg),
        "class_names": det.class_names,
        "label_to_category_id": det.label_to_category_id,
        "converted_from": src.name,
    }
    path = save_file(out, state)
    return path, name if isinstance(name, str) else "the given config"
