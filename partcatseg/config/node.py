"""``CfgNode``: fvcore's config node with strict, well-reported merging.

Why not fvcore/yacs merging as is: it reports an unknown key without the file it came from, loses
the file once ``_BASE_`` chains are pre-merged, and rejects ``BASE_LR: 1`` (int where a float is
expected). Here every merge (file, override list, other node) goes through one validating walk
that knows where each value came from.

Type rules (a superset of yacs, so every detectron2-style YAML that loads there loads here):
  * same type -> accepted; ``None`` may replace anything and anything may replace a ``None`` default;
  * int -> float is widened (bool is never a number);
  * list <-> tuple are converted to the default's container type; when the default is a non-empty
    homogeneous list of numbers / strings / bools, every element must be of that kind (elements
    are not converted: ``CROP.SIZE: (384, 384)`` stays ints);
  * strings are decoded with ``ast.literal_eval`` first (yacs behaviour), so ``"(384, )"`` is a
    tuple and ``1e-4`` a float, while ``ViT-B/16`` stays a string.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, List, Mapping, Optional, Sequence

from fvcore.common.config import CfgNode as _FvCfgNode

from .errors import ConfigError, ConfigTypeError, UnknownKeyError
from .yaml_io import BASE_KEY, read_config_chain

CLI_SOURCE = "command-line overrides"
_VALID_LEAF_TYPES = (tuple, list, str, int, float, bool, type(None))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _kind(x: Any) -> str:
    """Human-readable type of a value, e.g. 'str' or 'list of int'."""
    if isinstance(x, (list, tuple)) and x:
        inner = sorted({type(e).__name__ for e in x})
        return f"{type(x).__name__} of {'/'.join(inner)}"
    return type(x).__name__


def _expected(default: Any) -> str:
    """Describe what a key accepts, judged from its default value."""
    if isinstance(default, bool):
        return "a bool (True/False)"
    if isinstance(default, float):
        return "a float (an int is accepted)"
    if isinstance(default, int):
        return "an int"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (list, tuple)):
        elem = _element_kind(default)
        return f"a list/tuple of {elem}" if elem else "a list/tuple"
    return type(default).__name__


def _element_kind(default: Sequence[Any]) -> Optional[str]:
    """The element kind every item must have, or None when the default does not constrain it."""
    if not default:
        return None
    if all(isinstance(e, bool) for e in default):
        return "bools"
    if all(_is_number(e) for e in default):
        return "numbers"
    if all(isinstance(e, str) for e in default):
        return "strings"
    return None


def _element_ok(kind: str, e: Any) -> bool:
    if kind == "bools":
        return isinstance(e, bool)
    if kind == "numbers":
        return _is_number(e)
    return isinstance(e, str)


class CfgNode(_FvCfgNode):
    """A detectron2-compatible config node whose merges validate keys and types.

    Public additions over fvcore: :meth:`merge_mapping`, :meth:`all_keys`. ``merge_from_file``,
    ``merge_from_list`` and ``merge_from_other_cfg`` keep their fvcore signatures.
    """

    # ------------------------------------------------------------------ public merging API
    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge a YAML file and its ``_BASE_`` chain (bases first) into this node.

        ``allow_unsafe`` is accepted for fvcore signature compatibility; only ``yaml.safe_load``
        is ever used.
        """
        self._check_mutable(f"file '{cfg_filename}'")
        for source_file, mapping in read_config_chain(cfg_filename):
            self._merge_file_layer(mapping, source_file)

    def merge_from_list(self, cfg_list: Sequence[Any]) -> None:
        """Merge ``[KEY1, VALUE1, KEY2, VALUE2, ...]`` (typically the CLI ``opts``).

        Keys are full dotted names (``SOLVER.BASE_LR``); string values are literal-decoded.
        """
        self._check_mutable(CLI_SOURCE)
        if isinstance(cfg_list, (str, bytes)) or not isinstance(cfg_list, Sequence):
            raise ConfigError(
                f"{CLI_SOURCE} must be a list [KEY, VALUE, ...], got {type(cfg_list).__name__}"
            )
        if len(cfg_list) % 2 != 0:
            raise ConfigError(
                f"{CLI_SOURCE} must come in KEY VALUE pairs, got an odd number of items "
                f"({len(cfg_list)}): {list(cfg_list)!r}"
            )
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            if not isinstance(full_key, str) or not full_key:
                raise ConfigError(f"{CLI_SOURCE}: keys must be non-empty strings, got {full_key!r}")
            if full_key == BASE_KEY:
                raise ConfigError(f"'{BASE_KEY}' can only be used inside config files, not in {CLI_SOURCE}")
            self._set_dotted(full_key, raw, CLI_SOURCE)

    def merge_from_other_cfg(self, cfg_other: Mapping[str, Any]) -> None:
        """Merge another node (or plain nested mapping) into this one with the same checks."""
        self._check_mutable("another config")
        if BASE_KEY in cfg_other:
            raise ConfigError(f"'{BASE_KEY}' can only be used inside config files")
        self.merge_mapping(cfg_other, "another config")

    def merge_mapping(
        self, mapping: Mapping[str, Any], source: str, _prefix: str = "", _root: Optional["CfgNode"] = None
    ) -> None:
        """Merge a nested mapping; ``source`` (e.g. "file 'x.yaml'") is quoted in every error."""
        root = self if _root is None else _root
        if _root is None:
            self._check_mutable(source)
        for key, raw in mapping.items():
            full_key = f"{_prefix}{key}"
            if not isinstance(key, str):
                raise ConfigError(f"{source}: config keys must be strings, got {key!r} under '{_prefix or '<root>'}'")
            if key == BASE_KEY:
                raise ConfigError(f"{source}: '{BASE_KEY}' is only allowed at the top level of a config file")
            if key not in self:
                if self.is_new_allowed():
                    dict.__setitem__(self, key, self._new_value(raw))
                    continue
                raise UnknownKeyError(root._unknown_key_message(full_key, source))
            current = self[key]
            if isinstance(current, _FvCfgNode):
                if not isinstance(raw, Mapping):
                    raise ConfigTypeError(
                        f"{source}: config key '{full_key}' is a section of sub-keys "
                        f"({', '.join(sorted(current.keys())[:6])}, ...); got the value {raw!r} "
                        f"({_kind(raw)}) instead of a mapping"
                    )
                if not isinstance(current, CfgNode):
                    raise ConfigError(
                        f"{source}: '{full_key}' holds a {type(current).__name__}, not a "
                        "partcatseg CfgNode; build configs with partcatseg.config.get_cfg()"
                    )
                current.merge_mapping(raw, source, f"{full_key}.", root)
                continue
            if isinstance(raw, Mapping):
                raise ConfigTypeError(
                    f"{source}: config key '{full_key}' is a single value (default {current!r}), "
                    f"but a mapping was given: {dict(raw)!r}"
                )
            dict.__setitem__(self, key, self._coerce(raw, current, full_key, source))

    def all_keys(self, _prefix: str = "") -> List[str]:
        """All leaf keys as full dotted names (sorted), e.g. for docs and typo suggestions."""
        out: List[str] = []
        for k, v in self.items():
            if isinstance(v, CfgNode):
                out.extend(v.all_keys(f"{_prefix}{k}."))
            else:
                out.append(f"{_prefix}{k}")
        return sorted(out)

    # ------------------------------------------------------------------ internals
    def _merge_file_layer(self, mapping: Mapping[str, Any], source_file: str) -> None:
        version = mapping.get("VERSION")
        if version is not None and "VERSION" in self and version != self["VERSION"]:
            raise ConfigError(
                f"file '{source_file}': VERSION {version!r} is not supported "
                f"(only config VERSION {self['VERSION']} is; old-format detectron2 configs must be upgraded)"
            )
        self.merge_mapping(mapping, f"file '{source_file}'")

    def _check_mutable(self, source: str) -> None:
        if self.is_frozen():
            raise ConfigError(
                f"Cannot merge {source} into a frozen config; call cfg.defrost() first "
                "(or merge before setup_cfg freezes it)."
            )

    def _set_dotted(self, full_key: str, raw: Any, source: str) -> None:
        node: CfgNode = self
        parts = full_key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node:
                raise UnknownKeyError(self._unknown_key_message(full_key, source))
            child = node[part]
            if not isinstance(child, CfgNode):
                raise ConfigTypeError(
                    f"{source}: '{'.'.join(parts[: i + 1])}' is a value, not a section, "
                    f"so '{full_key}' does not exist"
                )
            node = child
        leaf = parts[-1]
        if leaf not in node:
            if node.is_new_allowed():
                dict.__setitem__(node, leaf, self._new_value(raw))
                return
            raise UnknownKeyError(self._unknown_key_message(full_key, source))
        current = node[leaf]
        if isinstance(current, _FvCfgNode):
            raise ConfigTypeError(
                f"{source}: '{full_key}' is a section; override its sub-keys individually "
                f"(e.g. {full_key}.{sorted(current.keys())[0]} VALUE)"
            )
        dict.__setitem__(node, leaf, self._coerce(raw, current, full_key, source))

    def _new_value(self, raw: Any) -> Any:
        return type(self)(raw) if isinstance(raw, Mapping) else self._decode_cfg_value(raw)

    def _coerce(self, raw: Any, default: Any, full_key: str, source: str) -> Any:
        """Decode ``raw`` and check it against the type of ``default`` (see module docstring)."""
        value = self._decode_cfg_value(raw)

        def fail(detail: str = "") -> ConfigTypeError:
            return ConfigTypeError(
                f"{source}: config key '{full_key}' got {value!r} ({_kind(value)}), "
                f"expected {_expected(default)} like the default {default!r}{detail}"
            )

        if not isinstance(value, _VALID_LEAF_TYPES):
            raise fail()
        if value is None or default is None:
            return value
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise fail()
            return value
        if isinstance(default, float):
            if not _is_number(value):
                raise fail()
            return float(value)
        if isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool):
                raise fail()
            return value
        if isinstance(default, str):
            if not isinstance(value, str):
                raise fail()
            return value
        if isinstance(default, (list, tuple)):
            if not isinstance(value, (list, tuple)):
                raise fail()
            kind = _element_kind(default)
            if kind is not None:
                for i, e in enumerate(value):
                    if not _element_ok(kind, e):
                        raise fail(f"; element {i} ({e!r}) is {type(e).__name__}, not one of the {kind}")
            return type(default)(value)
        if type(value) is not type(default):
            raise fail()
        return value

    def _unknown_key_message(self, full_key: str, source: str) -> str:
        """Explain an unknown key with the closest existing names (same section or same leaf name)."""
        msg = f"Unknown config key '{full_key}' in {source}."
        candidates = _suggest(full_key, self.all_keys())
        if candidates:
            msg += " Did you mean: " + ", ".join(f"'{c}'" for c in candidates) + "?"
        return msg


def _suggest(full_key: str, known: Iterable[str], limit: int = 3) -> List[str]:
    """Likely intended keys: near-miss full names, near-miss leaf in the same section, then the
    same leaf name in another section (strict cutoffs, so unrelated keys are not offered)."""
    known = list(known)
    section, _, leaf = full_key.rpartition(".")
    same_leaf = [k for k in known if k.rpartition(".")[2] == leaf and k != full_key]
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == section}
    near_leaf = [siblings[n] for n in difflib.get_close_matches(leaf, list(siblings), n=limit, cutoff=0.8)]
    near_full = difflib.get_close_matches(full_key, known, n=limit, cutoff=0.9)
    out: List[str] = []
    for k in near_full + near_leaf + same_leaf:
        if k not in out:
            out.append(k)
    return out[:limit]
