"""Configuration: the run's dataclasses (:mod:`.schema`) and their loading from YAML (:mod:`.loader`).

``load_config(path_or_preset, ["section.key=value", ...]) -> Config``; presets are the YAML files
packaged in ``retinanet/configs/``. Every invalid value raises :class:`ConfigError` naming the key.
"""

from retinanet.config.loader import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    list_presets,
    load_config,
    preset_path,
    save_config,
    validate,
)
from retinanet.config.schema import (
    AnchorConfig,
    BackboneConfig,
    Config,
    DataConfig,
    ModelConfig,
    SolverConfig,
    TestConfig,
    TrainConfig,
)

__all__ = [
    "BackboneConfig",
    "AnchorConfig",
    "ModelConfig",
    "DataConfig",
    "SolverConfig",
    "TrainConfig",
    "TestConfig",
    "Config",
    "ConfigError",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "validate",
    "preset_path",
    "list_presets",
    "save_config",
]
