"""YAML configuration: paper defaults, named presets and command-line overrides.

Every run starts from ``configs/paper.yaml`` (the paper's §4 pretraining settings), merges a
preset or user YAML file on top, then applies ``key.sub=value`` overrides from the command
line (values parsed as YAML, so ``--set stage1.epochs=5`` gives an int and
``--set student.backbone_kwargs.depths=[1,1,1,1]`` a list).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

PRESETS = ("paper", "demo", "demo-quick")


def _read_yaml(path_or_preset: str | Path) -> dict:
    name = str(path_or_preset)
    if name in PRESETS:
        text = resources.files("leader").joinpath("configs", f"{name}.yaml").read_text()
        source = f"preset {name!r}"
    else:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"config {name!r} is neither a preset ({', '.join(PRESETS)}) nor a file"
            )
        text = path.read_text()
        source = str(path)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: top level of a config must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """Return ``base`` updated recursively by ``update`` (mappings merge, other values replace)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` strings to a nested config.

    Raises:
        ValueError: an override without ``=``, or one that descends into a non-mapping.
    """
    out = copy.deepcopy(dict(cfg))
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a mapping in the config")
            node = nxt
        node[parts[-1]] = value
    return out


def load_config(preset_or_path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """Load the paper defaults, merge a preset / YAML file, apply overrides.

    Args:
        preset_or_path: ``None`` (paper defaults only), a preset name from :data:`PRESETS`,
            or a path to a YAML file.
        overrides: ``key.sub=value`` strings.

    Returns:
        The merged configuration as a plain ``dict``.
    """
    cfg = _read_yaml("paper")
    if preset_or_path is not None and str(preset_or_path) != "paper":
        cfg = deep_merge(cfg, _read_yaml(preset_or_path))
    return apply_overrides(cfg, overrides)
