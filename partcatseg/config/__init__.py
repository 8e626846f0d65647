"""Configuration: detectron2-style ``CfgNode`` with every official key, strict merging, ``_BASE_`` chains."""
from .defaults import (
    add_catseg_config,
    add_deeplab_config,
    add_framework_config,
    add_official_yaml_extras,
    get_cfg,
)
from .errors import ConfigError, ConfigFileNotFoundError, ConfigTypeError, UnknownKeyError
from .load import load_cfg, setup_cfg
from .node import CfgNode
from .resolve import (
    resolve_catseg_variant,
    resolve_device,
    resolve_meta_architecture,
    resolve_micro_batches,
    resolve_text_cache_dir,
    validate_framework_keys,
)
from .yaml_io import read_config_chain

__all__ = [
    "CfgNode",
    "ConfigError",
    "ConfigFileNotFoundError",
    "ConfigTypeError",
    "UnknownKeyError",
    "add_catseg_config",
    "add_deeplab_config",
    "add_framework_config",
    "add_official_yaml_extras",
    "get_cfg",
    "load_cfg",
    "read_config_chain",
    "resolve_catseg_variant",
    "resolve_device",
    "resolve_meta_architecture",
    "resolve_micro_batches",
    "resolve_text_cache_dir",
    "setup_cfg",
    "validate_framework_keys",
]
