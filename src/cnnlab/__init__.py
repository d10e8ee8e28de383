"""cnnlab: image-classification experiments from one TOML file.

Notebook API::

    import cnnlab
    run = cnnlab.run("examples/quickstart.toml", overrides={"train.epochs": 5})
    run.metrics["test"]["accuracy"], run.history[-1], run.dir, run.model
"""

__version__ = "0.1.0"

__all__ = ["Run", "run", "resume", "evaluate", "predict", "__version__"]


def __getattr__(name: str):
    # Lazy: `import cnnlab.config` (and the CLI's startup) need not import torch and every module.
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
