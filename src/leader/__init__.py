"""LeADER: anatomy-disease entangled representations of chest radiographs.

``leader.load(path)`` returns a trained student with ``.embed(images)`` (see :mod:`leader.api`);
it is imported lazily so that ``import leader`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def __getattr__(name: str):
    if name == "load":
        from .api import load  # noqa: PLC0415

        return load
    raise AttributeError(f"module 'leader' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"load"})
