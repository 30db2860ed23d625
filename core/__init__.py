"""poisonlens: train under the EPIC poisoning defense, or add EPIC to your own loop, and see what it drops.

``import poisonlens`` is light (no torch): the public API below is imported on first use.

- :class:`EpicTracker`: EPIC's snapshots, schedule and run store in your own training loop
  (docs/api.md), with its options in a :class:`TrackerOptions`;
- :class:`ActiveSampler`: a torch ``Sampler`` over the examples still trained on (DDP-aware).
"""

__version__ = "0.1.0"

# name -> module, imported when the name is first used (PEP 562)
_LAZY = {name: "poisonlens.tracker" for name in ("EpicTracker", "TrackerOptions", "ActiveSampler")}
__all__ = ["ActiveSampler", "EpicTracker", "TrackerOptions", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'poisonlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
