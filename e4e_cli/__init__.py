"""e4e: edit real photos with StyleGAN2 and the e4e encoder.

The library's main names are importable from here (loaded on first use, so `import e4e_cli`
stays cheap): `E4E`, `load_model`, `ModelOptions`, `invert_inputs`, `InvertOptions`, `EditJob`,
`run_edit`, `resolve_direction`, `load_latents`, `paste_face`, `E4EError`, `MissingWeightsError`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "E4E": "model", "load_model": "model", "ModelOptions": "model",
    "invert_inputs": "jobs.invert", "InvertOptions": "jobs.invert",
    "EditJob": "jobs.edit", "run_edit": "jobs.edit", "resolve_direction": "jobs.edit",
    "load_latents": "jobs.dataset", "paste_face": "compositing",
    "E4EError": "errors", "MissingWeightsError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
