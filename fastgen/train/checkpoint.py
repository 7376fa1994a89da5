"""Checkpoints as safetensors files, written atomically, with everything an exact resume needs.

A checkpoint is one ``.safetensors`` file: tensors under prefixes (``model/``, ``ema/``,
``optim/state/<i>/<key>``, ``rng/...``) and a JSON document in the safetensors metadata
(``"fastgen"``: step, optimizer hyper-parameters, trainer config, format version). Loading never
unpickles anything: safetensors is a flat, typed tensor format, so a checkpoint from an untrusted
source cannot run code.

Writes are atomic: the file is written under a temporary name in the destination folder, flushed
to disk (``fsync``) and renamed over the destination, then the folder entry is synced. A crash or
a full disk mid-write leaves the previous checkpoint intact; a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

FORMAT_VERSION = 1
_META_KEY = "fastgen"
_STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")
PathLike = Union[str, os.PathLike]


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as exc:  # a hard dependency of the trainers
        raise ImportError("fastgen checkpoints need safetensors: pip install safetensors") from exc
    return st


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Atomically write ``tensors`` (CPU copies are made) and a JSON-serialisable ``metadata`` dict."""
    st = _safetensors()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {}
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save_checkpoint: {k!r} is a {type(t).__name__}, not a tensor")
        flat[k] = t.detach().to("cpu", copy=True).contiguous()  # copies: no shared storage between entries
    meta = {_META_KEY: json.dumps({"format_version": FORMAT_VERSION, **metadata})}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        st.save_file(flat, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(tensors, metadata)`` of a checkpoint written by :func:`save_checkpoint`.

    Raises FileNotFoundError for a missing file and ValueError (naming the file) for anything that
    is not a fastgen safetensors checkpoint: a truncated or corrupt file, a pickle, another format.
    """
    st = _safetensors()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    try:
        with st.safe_open(str(path), framework="pt", device=str(device)) as f:
            meta_raw = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for every kind of bad file
        raise ValueError(f"checkpoint {str(path)!r} is not a readable safetensors file: {exc}") from exc
    if meta_raw is None:
        raise ValueError(f"checkpoint {str(path)!r} is a safetensors file but not a fastgen checkpoint "
                         f"(no {_META_KEY!r} metadata)")
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint {str(path)!r} has corrupt metadata: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {str(path)!r} has format version {meta.get('format_version')!r}; "
                         f"this fastgen reads version {FORMAT_VERSION}")
    return tensors, meta


def checkpoint_path(folder: PathLike, step: int) -> Path:
    """The file name of the checkpoint of ``step`` in ``folder``."""
    return Path(folder) / f"step_{step:08d}.safetensors"


def list_checkpoints(folder: PathLike) -> list[Tuple[int, Path]]:
    """``(step, path)`` of the ``step_*.safetensors`` files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: PathLike) -> Optional[Path]:
    """The newest ``step_*.safetensors`` in ``folder`` (None if there is none)."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints in ``folder`` (keep >= 1)."""
    for _, p in list_checkpoints(folder)[:-keep]:
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- prefixes
def with_prefix(prefix: str, tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


def strip_prefix(prefix: str, tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    p = prefix + "/"
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


# ----------------------------------------------------------------------------- optimizer
def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """An optimizer's ``state_dict`` as flat tensors ``state/<param index>/<key>`` plus JSON metadata
    (param groups and any non-tensor per-parameter state)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                           meta: Mapping[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_tensors`: load the state into ``optimizer`` (copies: the
    optimizer never aliases ``tensors``)."""
    state: Dict[int, Dict[str, Any]] = {}
    for k, v in tensors.items():
        _, idx, key = k.split("/", 2)
        state.setdefault(int(idx), {})[key] = v.clone()
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- RNG
def rng_tensors(*generators: Tuple[str, torch.Generator]) -> Dict[str, torch.Tensor]:
    """The global CPU (and CUDA) RNG states and those of named generators, as uint8 tensors."""
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    for name, g in generators:
        out[f"gen_{name}"] = g.get_state()
    return out


def restore_rng(tensors: Mapping[str, torch.Tensor], **generators: torch.Generator) -> None:
    """Inverse of :func:`rng_tensors` (CUDA states only for devices that exist here)."""
    if "torch_cpu" in tensors:
        torch.set_rng_state(tensors["torch_cpu"].cpu())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"torch_cuda_{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"torch_cuda_{i}"].cpu(), i)
    for name, g in generators.items():
        key = f"gen_{name}"
        if key not in tensors:
            raise ValueError(f"the checkpoint has no state for the {name!r} generator")
        g.set_state(tensors[key].cpu())
