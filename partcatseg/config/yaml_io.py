"""Reading YAML config files and resolving their ``_BASE_`` chains.

The chain is returned as a list of ``(file, mapping)`` layers, bases first, instead of being
pre-merged into one dict (as fvcore does). Applying the layers one after another gives the same
result, but lets every error name the file that actually contains the offending key.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import yaml

from .errors import ConfigError, ConfigFileNotFoundError

BASE_KEY = "_BASE_"

Layer = Tuple[str, Dict[str, Any]]


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice with different values in one mapping.

    PyYAML silently keeps the last value. A repeat with the same value is harmless and accepted (the
    official ``base_partcatseg_config.yaml`` lists ``SOLVER.CHECKPOINT_PERIOD: 1000`` twice).
    """


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
    seen: Dict[Any, Tuple[int, Any]] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        value = loader.construct_object(value_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: the base constructor reports it
            break
        if first is not None and first[1] != value:
            raise ConfigError(
                f"'{loader.name}', line {key_node.start_mark.line + 1}: key '{key}' is given twice in the "
                f"same mapping with different values ({first[1]!r} on line {first[0]}, {value!r} here); "
                "remove one of them"
            )
        seen[key] = (key_node.start_mark.line + 1, value)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml_mapping(path: str) -> Dict[str, Any]:
    """Parse one YAML file that must hold a mapping (an empty file counts as an empty mapping)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.load(f, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Cannot parse config file '{path}' as YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file '{path}' must contain a mapping of keys at top level, "
            f"got {type(data).__name__}: {data!r}"
        )
    return data


def _resolve_base_path(base: Any, including_file: str) -> str:
    """A base path is relative to the directory of the file that names it (like fvcore)."""
    if not isinstance(base, str) or not base:
        raise ConfigError(
            f"'{BASE_KEY}' in '{including_file}' must be a non-empty file path "
            f"(or a list of them), got {base!r}"
        )
    if base.startswith(("http://", "https://")):
        raise ConfigError(
            f"'{BASE_KEY}: {base}' in '{including_file}': remote base configs are not supported; "
            "download the file and reference it by path."
        )
    path = os.path.expanduser(base)
    if not os.path.isabs(path):
        path = os.path.join(os.path.dirname(os.path.abspath(including_file)), path)
    return os.path.normpath(path)


def read_config_chain(path: str) -> List[Layer]:
    """Return the layers of ``path``: every ``_BASE_`` (recursively, in order) then the file itself.

    Raises:
        ConfigFileNotFoundError: ``path`` or a base it names does not exist; the message names both
            the including file and the missing path.
        ConfigError: unparsable YAML, a non-mapping document, a malformed ``_BASE_`` or a cycle.
    """
    if not os.path.isfile(path):
        raise ConfigFileNotFoundError(f"Config file not found: '{path}'")
    return _read_chain(os.path.normpath(os.path.abspath(path)), display=path, stack=[])


def _read_chain(path: str, display: str, stack: List[str]) -> List[Layer]:
    if path in stack:
        cycle = " -> ".join(stack[stack.index(path):] + [path])
        raise ConfigError(f"'{BASE_KEY}' cycle between config files: {cycle}")
    data = _read_yaml_mapping(path)
    layers: List[Layer] = []
    if BASE_KEY in data:
        bases = data.pop(BASE_KEY)
        for base in bases if isinstance(bases, list) else [bases]:
            base_path = _resolve_base_path(base, display)
            if not os.path.isfile(base_path):
                raise ConfigFileNotFoundError(
                    f"Base config '{base}' named by '{BASE_KEY}' in '{display}' not found "
                    f"(looked for '{base_path}')"
                )
            layers.extend(_read_chain(base_path, display=base_path, stack=stack + [path]))
    layers.append((display, data))
    return layers
