"""cnnlab: image-classification experiments from one TOML file.

Notebook API::

    import cnnlab
    run = cnnlab.run("examples/quickstart.toml", overrides={"train.epochs": 5})
    run.metrics["test"]["accuracy"], run.history[-1], run.dir, run.model

The package is laid out by concern (README, "How the code is laid out"): ``data``, ``models``,
``train``, ``report``, ``sweep``, ``diagnose`` and the modules that tie them together
(``config``, ``experiment``, ``rundir``, ``lifecycle``, ``inference``, ``runner``, ``cli``).
"""

import importlib

from ._version import __version__

# Name -> module that defines it. Loaded on first use (PEP 562): `import cnnlab` and the command
# line's start-up then need neither torch nor the rest of the package.
_API = {"Run": "runner", "run": "runner", "resume": "runner", "evaluate": "inference", "predict": "inference"}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
