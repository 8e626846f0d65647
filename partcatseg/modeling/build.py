"""``build_model(cfg)``: the configured meta-architecture, detectron2's way.

A meta-architecture is a :class:`~partcatseg.modeling.meta_arch.SegmentationModel` sub-class registered in
:data:`META_ARCH_REGISTRY` under its ``MODEL.META_ARCHITECTURE`` name; ``build_model`` calls its
``from_config(cfg)`` for the constructor arguments and builds it. The built-in models register when
their modules are imported (here, on the first build); your own register when the modules named in
``MODEL.PLUGINS`` are imported.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import Any, Sequence

from ..config import ConfigError, resolve_device, resolve_meta_architecture
from .meta_arch import META_ARCH_REGISTRY, SegmentationModel

__all__ = [
    "META_ARCH_REGISTRY",
    "build_model",
    "import_plugins",
    "meta_architecture_class",
    "register_builtin_models",
    "registered_meta_architectures",
]

logger = logging.getLogger(__name__)

# The module whose import registers each built-in meta-architecture. Imported when the name is asked
# for: they pull in open_clip / timm / transformers, which `import partcatseg.modeling` alone should not.
BUILTIN_MODEL_MODULES: dict[str, str] = {
    "PartCATSeg": "partcatseg.modeling.partcatseg",
    "CATSeg": "partcatseg.modeling.catseg",
    "CATSegBaseline": "partcatseg.modeling.catseg",
    "PartCLIPSeg": "partcatseg.modeling.partclipseg",
}


def register_builtin_models(names: Sequence[str] = ()) -> None:
    """Import the modules of the built-in ``names`` (all of them when empty)."""
    for module in sorted({BUILTIN_MODEL_MODULES[n] for n in (names or BUILTIN_MODEL_MODULES) if n in BUILTIN_MODEL_MODULES}):
        importlib.import_module(module)


def _import_file(path: str) -> ModuleType:
    name = "partcatseg_plugin_" + os.path.splitext(os.path.basename(path))[0]
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == os.path.abspath(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    if spec is None or spec.loader is None:
        raise ConfigError(f"MODEL.PLUGINS: cannot import {path!r} (not a Python file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_plugins(plugins: Sequence[str]) -> list[ModuleType]:
    """Import ``MODEL.PLUGINS``: dotted module names or paths to ``.py`` files (idempotent).

    A plugin registers what it defines (meta-architectures, datasets, vocabularies, mappers) when imported.
    """
    modules = []
    for plugin in plugins:
        try:
            if plugin.endswith(".py") or os.sep in plugin:
                if not os.path.isfile(plugin):
                    raise ConfigError(f"MODEL.PLUGINS: file {plugin!r} does not exist")
                modules.append(_import_file(plugin))
            else:
                modules.append(importlib.import_module(plugin))
        except ModuleNotFoundError as err:
            raise ConfigError(
                f"MODEL.PLUGINS: cannot import {plugin!r} ({err}); give a module on sys.path or a path to a .py file"
            ) from err
    return modules


def registered_meta_architectures() -> list[str]:
    register_builtin_models()
    return sorted(name for name, _ in META_ARCH_REGISTRY)


def meta_architecture_class(cfg: Any) -> type:
    """The registered class ``MODEL.META_ARCHITECTURE`` names (plugins imported), without building it.

    Lets callers check the model's ``task`` before paying for the model's construction.
    """
    import_plugins(cfg.MODEL.PLUGINS)
    name = resolve_meta_architecture(cfg)
    if name not in META_ARCH_REGISTRY:
        register_builtin_models([name])
    if name not in META_ARCH_REGISTRY:
        raise ConfigError(
            f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} is not registered; known: "
            f"{registered_meta_architectures()} (your own: register it and list its module in MODEL.PLUGINS)"
        )
    cls = META_ARCH_REGISTRY.get(name)
    if not (isinstance(cls, type) and issubclass(cls, SegmentationModel)):
        raise TypeError(f"META_ARCH_REGISTRY[{name!r}] is {cls!r}, not a SegmentationModel sub-class")
    return cls


def build_model(cfg: Any) -> SegmentationModel:
    """Build the configured meta-architecture on ``MODEL.DEVICE`` with random weights (no network).

    Load weights afterwards with :class:`partcatseg.checkpoint.Checkpointer`.
    """
    cls = meta_architecture_class(cfg)
    kwargs = cls.from_config(cfg)
    if cfg.MODEL.GRADIENT_CHECKPOINTING and not kwargs.get("grad_checkpointing"):
        # a model whose from_config does not pass the key on would silently train without it
        raise ConfigError(f"MODEL.GRADIENT_CHECKPOINTING=True: {cls.__name__} does not support activation checkpointing")
    model = cls(**kwargs)
    device = resolve_device(cfg)
    model.to(device)
    logger.info("built %s on %s (%.1fM parameters)", cls.__name__, device, sum(p.numel() for p in model.parameters()) / 1e6)
    return model
