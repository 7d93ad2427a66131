"""The model: what a run is (``settings.RunInfo``), the quantized base with LoRA and the dynamic-length encoder
(``build``), and the base as trained with its adapters merged (``merging``). Imports data and decoding only.

The builders' names load from here on first use (``from whisper_lora_pl.model import set_context``, as exported
model cards show it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from whisper_lora_pl.model.build import (
        DynamicLengthEncoder,
        DynamicWhisper,
        build_whisper_lora,
        count_parameters,
        load_base,
        load_whisper,
        set_context,
    )
    from whisper_lora_pl.model.settings import LoraSettings, RunInfo

_HOMES = {
    "DynamicLengthEncoder": "build",
    "DynamicWhisper": "build",
    "build_whisper_lora": "build",
    "count_parameters": "build",
    "load_base": "build",
    "load_whisper": "build",
    "set_context": "build",
    "LoraSettings": "settings",
    "RunInfo": "settings",
}
__all__ = [
    "DynamicLengthEncoder",
    "DynamicWhisper",
    "LoraSettings",
    "RunInfo",
    "build_whisper_lora",
    "count_parameters",
    "load_base",
    "load_whisper",
    "set_context",
]


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
