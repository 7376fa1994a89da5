"""fastgen: fused kernels for generative image models in PyTorch.

    import fastgen
    x_prev, x0 = fastgen.functional.ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev)

See ``python -m fastgen info`` for what is available on this machine.
"""
__version__ = "0.1.0"

from . import backend, functional, ops  # noqa: E402  (ops registers the custom ops)
from .backend import BackendUnavailableError, use_backend  # noqa: E402
from .optimize import optimize, restore  # noqa: E402  (the function shadows the submodule's name)

__all__ = ["__version__", "backend", "functional", "ops", "use_backend", "BackendUnavailableError", "sample",
           "optimize", "restore"]


def _register_dynamo_backend() -> None:
    """Register ``torch.compile(backend="fastgen")`` without importing the backend's code (it is
    imported on first use). Never fails: without torch._dynamo the backend is simply absent."""
    try:
        from torch._dynamo.backends import registry
    except Exception:  # pragma: no cover - torch builds without dynamo
        return
    if "fastgen" in registry._COMPILER_FNS:
        return

    def fastgen(gm, example_inputs, **kwargs):
        from .compile_backend import fastgen_backend

        return fastgen_backend(gm, example_inputs, **kwargs)

    try:
        registry.register_backend(compiler_fn=fastgen, name="fastgen")
    except Exception:  # pragma: no cover - a registry API change must not break import fastgen
        pass


_register_dynamo_backend()


def __getattr__(name: str):
    """Lazy attributes: ``fastgen.sample`` (the diffusion sampling loop), ``fastgen.diffusion`` and
    ``fastgen.nn`` are imported on first use, keeping ``import fastgen`` cheap."""
    if name == "sample":
        from .diffusion.sampling import sample

        return sample
    if name in ("diffusion", "nn"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
