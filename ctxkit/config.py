"""Build pipelines from dicts and YAML files.

A pipeline config has a ``stages`` list; each stage spec is a dict with a ``type`` key and the
stage's settings::

    stages:
      - type: chroma
        path: ./index
        k: 100
      - type: cross_encoder
        model: ./models/ms-marco-MiniLM-L-6-v2
        k: 20

``type`` is a name from :mod:`ctxkit.registry` (built-in, registered with
:func:`~ctxkit.registry.register_stage`, or published by another package under the entry-point
group ``ctxkit.stages``) or an import path ``"package.module:ClassName"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .pipeline import Pipeline
from .registry import available_stages, build_stage, register_stage, stage_type_name

__all__ = ["available_stages", "build_stage", "load_pipeline", "register_stage", "stage_type_name"]


def load_pipeline(source: str | os.PathLike[str] | Mapping[str, Any]) -> Pipeline:
    """Build a :class:`~ctxkit.Pipeline` from a YAML file path, a YAML string or a dict.

    Raises:
        ConfigError: unknown stage types or keys, invalid values (the message names the stage and
            field), or a malformed file.
    """
    if isinstance(source, Mapping):
        cfg: Any = dict(source)
    else:
        import yaml

        text = str(source)
        path = Path(text)
        try:
            is_file = "\n" not in text and path.is_file()
        except OSError:
            is_file = False
        if is_file:
            text = path.read_text(encoding="utf-8")
        elif isinstance(source, os.PathLike) or text.endswith((".yaml", ".yml")):
            raise ConfigError(f"pipeline config file {text!r} does not exist")
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"pipeline config is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("stages"), list):
        raise ConfigError("a pipeline config needs a top-level 'stages' list of stage specs")
    unknown = set(cfg) - {"stages", "batch_size"}
    if unknown:
        raise ConfigError(f"unknown pipeline keys {sorted(unknown)}; allowed: 'stages', 'batch_size'")
    stages = [build_stage(s) for s in cfg["stages"]]
    return Pipeline(stages, batch_size=cfg.get("batch_size"))
