"""fastgen: fused kernels for generative image models in PyTorch.

    import fastgen
    x_prev, x0 = fastgen.functional.ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev)

See ``python -m fastgen info`` for what is available on this machine.
"""
__version__ = "0.1.0"

from . import backend, functional, ops  # noqa: E402  (ops registers the custom ops)
from .backend import BackendUnavailableError, use_backend  # noqa: E402

__all__ = ["__version__", "backend", "functional", "ops", "use_backend", "BackendUnavailableError", "sample"]


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
