"""Loaders for the StyleGAN2 checkpoints people actually have.

* rosinality/stylegan2-pytorch ``.pt`` files: a ``torch.save`` dict with
  ``g_ema`` (a state dict), optionally ``latent_avg``, ``g``, ``d``,
  optimiser states and an ``argparse.Namespace`` of training args. Read with
  ``torch.load(weights_only=True)`` (tensors and plain containers only).
* NVlabs stylegan2-ada-pytorch ``.pkl`` files: a plain pickle of a dict with
  ``G``, ``D``, ``G_ema`` modules wrapped by ``torch_utils.persistence``,
  which embeds the source code of the network module and would ``exec`` it
  when unpickled normally. We read these with :class:`RestrictedUnpickler`,
  which resolves only a short whitelist of globals (tensor/storage
  rebuilders, OrderedDict, numpy array/scalar reconstruction) and replaces
  the persistence hook by a stub that records the class name and the module
  state (parameters, buffers, children, plain attributes). No code from the
  file is ever run; any other global is refused.

Both layouts are mapped name by name onto :class:`~.stylegan2.Generator`;
the architecture (resolution, widths, mapping depth) is inferred from tensor
shapes, so 256px (config E/paper256) and 1024px (config F) FFHQ models load
the same way.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.errors import UserError
from ..common.fileio import check_input_file
from .stylegan2 import Generator, StyleGAN2Config, load_state_checked

FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


# --------------------------------------------------------------------------- restricted unpickler


class PersistentObject:
    """Stands in for an NVlabs persistent module: its class name and state only."""

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name})"


class _EasyDict(dict):
    """Stand-in for ``dnnlib.EasyDict`` (a dict with attribute access)."""


def _reconstruct_persistent_obj(meta):
    """Replacement for ``torch_utils.persistence._reconstruct_persistent_obj``.

    The original execs ``meta['module_src']``; we only keep the state.
    """
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("malformed persistent object record")
    name = meta.get("class_name")
    state = meta.get("state")
    if not isinstance(name, str) or not isinstance(state, dict):
        raise pickle.UnpicklingError("malformed persistent object record")
    return PersistentObject(name, state)


def _as_int_tuple(v, what: str) -> tuple[int, ...]:
    if isinstance(v, torch.Size):
        v = tuple(v)
    if not isinstance(v, tuple) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise pickle.UnpicklingError(f"tensor record has a malformed {what}")
    return v


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    """Safe version of torch._utils._rebuild_tensor_v2/v3: a view on a loaded storage."""
    if isinstance(storage, torch.storage.TypedStorage):
        untyped, dtype = storage._untyped_storage, storage.dtype
    else:
        raise pickle.UnpicklingError("tensor record does not reference a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise pickle.UnpicklingError("tensor record has a malformed offset")
    size = _as_int_tuple(size, "size")
    stride = _as_int_tuple(stride, "stride")
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError("tensor record has a malformed shape")
    t = torch.empty((0,), dtype=dtype)
    try:
        return t.set_(untyped, storage_offset, size, stride)
    except RuntimeError as e:
        raise pickle.UnpicklingError(f"tensor record out of bounds: {e}") from None


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *rest):
    if isinstance(storage, torch.UntypedStorage) and isinstance(dtype, torch.dtype):
        storage = torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *rest):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter record does not hold a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("unsupported tensor subclass record")
    return func(*args)


def _load_storage_from_bytes(b):
    """``torch.storage._load_from_bytes``: a legacy torch.save of one storage, read with weights_only."""
    if not isinstance(b, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage record is not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            s = torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure here means a corrupt record
            raise pickle.UnpicklingError(f"corrupt storage record ({e})") from None
    if not isinstance(s, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("storage record does not hold a storage")
    if isinstance(s, torch.UntypedStorage):
        s = torch.storage.TypedStorage(wrap_storage=s, dtype=torch.uint8, _internal=True)
    return s


def _np_reconstruct(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("numpy record for a class other than ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("unsupported numpy scalar")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _np_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise pickle.UnpicklingError("unsupported numpy dtype record")
    return np.dtype(spec, align, copy)


_TORCH_DTYPES = {
    name: getattr(torch, name)
    for name in ("float16", "float32", "float64", "bfloat16", "uint8", "int8", "int16", "int32", "int64", "bool")
}

#: (module, name) -> safe object. Anything else in the file is refused.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "Size"): torch.Size,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}
_ALLOWED.update({("torch", n): d for n, d in _TORCH_DTYPES.items()})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only whitelisted globals and never runs file code."""

    def find_class(self, module: str, name: str):
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return obj

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id (not a plain pickle)")


def restricted_load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; UserError on refusal or damage."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise UserError(f"refusing to load {p}: {e} (only tensors, arrays and plain containers are allowed)") from None
    except Exception as e:  # noqa: BLE001 - the file is user input; any failure is "unreadable"
        raise UserError(f"{p} is not a readable pickle (truncated or corrupt: {type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- helpers


def _warn(msg: str) -> None:
    print(f"mm2latent: warning: {msg}", file=sys.stderr)


def _check_fir(t: torch.Tensor, where: str) -> None:
    """Official models all use the [1,3,3,1] filter; refuse others rather than silently differ."""
    t = t.detach().double()
    k = torch.tensor(FIR_TAPS, dtype=torch.float64)
    ref = k if t.ndim == 1 else torch.outer(k, k)
    if t.shape != ref.shape or not torch.allclose(t / t.sum(), ref / ref.sum(), atol=1e-6):
        raise UserError(f"unsupported resampling filter in {where}: only [1,3,3,1] is implemented")


def _need(sd: dict, key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise UserError(f"{what} is not a StyleGAN2 generator this loader understands: missing tensor {key!r}")
    v = sd[key]
    if not isinstance(v, torch.Tensor):
        raise UserError(f"{what}: entry {key!r} is not a tensor")
    return v


def _finish(cfg: StyleGAN2Config, ours: dict[str, torch.Tensor], what: str) -> Generator:
    """Load mapped tensors; estimate w_avg from 10k samples when the file lacks it."""
    G = Generator(cfg)
    w_avg_known = "mapping.w_avg" in ours
    if not w_avg_known:
        ours["mapping.w_avg"] = torch.zeros(cfg.w_dim)
    load_state_checked(G, ours, what)
    if not w_avg_known:
        _warn(f"{what} stores no average w (latent_avg / w_avg); estimated it from 10,000 random z")
        G.mapping.w_avg.copy_(G.estimate_w_avg())
    return G.eval().requires_grad_(False)


# --------------------------------------------------------------------------- rosinality


def rosinality_to_ours(sd: dict[str, torch.Tensor], what: str = "checkpoint",
                       lr_mlp: float = 0.01) -> tuple[StyleGAN2Config, dict[str, torch.Tensor]]:
    """Map a rosinality ``Generator.state_dict()`` onto our names and shapes.

    Works on any tensors (including ``meta`` tensors), so it can be checked
    against full-size configs without allocating them.
    """
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return _need(sd, key, what)

    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    if n_mlp == 0:
        _need(sd, "style.1.weight", what)
    n_rgb = 0
    while f"to_rgbs.{n_rgb}.conv.weight" in sd:
        n_rgb += 1
    resolution = 2 ** (n_rgb + 2)
    style_dim = take("style.1.weight").shape[1]
    ours: dict[str, torch.Tensor] = {}
    for i in range(n_mlp):
        ours[f"mapping.fcs.{i}.weight"] = take(f"style.{i + 1}.weight")
        ours[f"mapping.fcs.{i}.bias"] = take(f"style.{i + 1}.bias")
    w_dim = ours[f"mapping.fcs.{n_mlp - 1}.weight"].shape[0]

    missing_noise = []
    noise_gen = torch.Generator().manual_seed(0)

    def styled(src: str, dst: str, noise_key: str, res: int):
        ours[f"{dst}.weight"] = take(f"{src}.conv.weight").squeeze(0)
        ours[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        ours[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        ours[f"{dst}.bias"] = take(f"{src}.activate.bias").reshape(-1)
        ours[f"{dst}.noise_strength"] = take(f"{src}.noise.weight").reshape(())
        if noise_key in sd:  # early rosinality versions did not store the fixed noise maps
            noise = take(noise_key)
            ours[f"{dst}.noise_const"] = noise.reshape(noise.shape[-2:])
        else:
            missing_noise.append(noise_key)
            ours[f"{dst}.noise_const"] = torch.randn(res, res, generator=noise_gen)
        if f"{src}.conv.blur.kernel" in sd:
            _check_fir(take(f"{src}.conv.blur.kernel"), src)

    def torgb(src: str, dst: str):
        ours[f"{dst}.weight"] = take(f"{src}.conv.weight").squeeze(0)
        ours[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        ours[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        ours[f"{dst}.bias"] = take(f"{src}.bias").reshape(-1)
        if f"{src}.upsample.kernel" in sd:
            _check_fir(take(f"{src}.upsample.kernel"), src)

    ours["synthesis.blocks.0.const"] = take("input.input").squeeze(0)
    styled("conv1", "synthesis.blocks.0.conv1", "noises.noise_0", 4)
    torgb("to_rgb1", "synthesis.blocks.0.torgb")
    for k in range(n_rgb):
        res = 2 ** (k + 3)
        styled(f"convs.{2 * k}", f"synthesis.blocks.{k + 1}.conv0", f"noises.noise_{2 * k + 1}", res)
        styled(f"convs.{2 * k + 1}", f"synthesis.blocks.{k + 1}.conv1", f"noises.noise_{2 * k + 2}", res)
        torgb(f"to_rgbs.{k}", f"synthesis.blocks.{k + 1}.torgb")
    if missing_noise:
        _warn(f"{what} stores no fixed noise maps ({missing_noise[0]}, ...); noise_mode='const' uses seeded "
              "random maps instead")

    leftover = sorted(k for k in sd if k not in used)
    if leftover:
        raise UserError(f"{what} has tensors this StyleGAN2 loader does not know (e.g. {', '.join(leftover[:3])}); "
                        "is it another architecture?")
    channels = {4: ours["synthesis.blocks.0.const"].shape[0]}
    for k in range(n_rgb):
        channels[2 ** (k + 3)] = ours[f"synthesis.blocks.{k + 1}.conv1.weight"].shape[0]
    hidden = ours["mapping.fcs.0.weight"].shape[0]
    cfg = StyleGAN2Config(resolution=resolution, z_dim=style_dim, w_dim=w_dim, mapping_layers=n_mlp,
                          mapping_width=hidden if n_mlp > 1 and hidden != w_dim else None,
                          lr_mlp=lr_mlp, channels=channels)
    return cfg, ours


def generator_from_rosinality(ckpt: dict, what: str = "checkpoint", key: str | None = None,
                              lr_mlp: float = 0.01) -> Generator:
    """Build our Generator from a loaded rosinality checkpoint dict (or bare state dict)."""
    if key is None:
        key = next((k for k in ("g_ema", "g") if k in ckpt), None)
    if key is not None:
        if key not in ckpt:
            raise UserError(f"{what} has no {key!r} entry (has: {', '.join(map(str, list(ckpt)[:8]))})")
        sd = ckpt[key]
    else:
        sd = ckpt
    if not isinstance(sd, dict):
        raise UserError(f"{what}: {key!r} is not a state dict")
    cfg, ours = rosinality_to_ours(sd, what, lr_mlp=lr_mlp)
    latent_avg = ckpt.get("latent_avg") if key is not None else None
    if isinstance(latent_avg, torch.Tensor):
        ours["mapping.w_avg"] = latent_avg.reshape(-1)
    return _finish(cfg, ours, what)


# --------------------------------------------------------------------------- NVlabs


def flatten_persistent(obj: PersistentObject, prefix: str = "", tensors=None, attrs=None):
    """Walk a persistent module tree into ``state_dict``-style names plus plain attributes."""
    tensors = {} if tensors is None else tensors
    attrs = {} if attrs is None else attrs
    st = obj.state
    for group in ("_parameters", "_buffers"):
        for name, v in (st.get(group) or {}).items():
            if isinstance(v, torch.Tensor):
                tensors[prefix + name] = v
    plain = {}
    for k, v in st.items():
        if k.startswith("_"):
            continue
        if isinstance(v, (np.generic,)):
            v = v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            plain[k] = v
    attrs[prefix.rstrip(".")] = dict(plain, __class__=obj.class_name)
    for name, child in (st.get("_modules") or {}).items():
        if isinstance(child, PersistentObject):
            flatten_persistent(child, f"{prefix}{name}.", tensors, attrs)
        elif child is not None:
            raise UserError(f"unsupported module {prefix}{name} of type {type(child).__name__} in pickle")
    return tensors, attrs


def nvlabs_to_ours(sd: dict[str, torch.Tensor], attrs: dict[str, dict] | None = None,
                   what: str = "checkpoint") -> tuple[StyleGAN2Config, dict[str, torch.Tensor]]:
    """Map NVlabs (stylegan2-ada-pytorch) ``G.state_dict()`` names onto ours.

    ``attrs`` (from :func:`flatten_persistent`) supplies the mapping lr
    multiplier and conv clamp; without it the official defaults are used.
    """
    attrs = attrs or {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return _need(sd, key, what)

    if any(k.startswith("mapping.embed.") for k in sd) or (attrs.get("", {}).get("c_dim") or 0) > 0:
        raise UserError(f"{what} is a class-conditional generator; only unconditional models are supported")
    if "synthesis.b4.const" not in sd and any(k.startswith("synthesis.input.") for k in sd):
        raise UserError(f"{what} looks like a StyleGAN3 generator; only StyleGAN2 is supported")
    res_keys = sorted({int(m.group(1)) for k in sd if (m := re.match(r"synthesis\.b(\d+)\.", k))})
    if not res_keys or res_keys[0] != 4:
        _need(sd, "synthesis.b4.const", what)
    resolution = res_keys[-1]
    if res_keys != [2**i for i in range(2, int(math.log2(resolution)) + 1)]:
        raise UserError(f"{what}: synthesis blocks {res_keys} are not a 4..R power-of-two ladder")
    n_map = 0
    while f"mapping.fc{n_map}.weight" in sd:
        n_map += 1
    if n_map == 0:
        _need(sd, "mapping.fc0.weight", what)

    ours: dict[str, torch.Tensor] = {}
    for i in range(n_map):
        ours[f"mapping.fcs.{i}.weight"] = take(f"mapping.fc{i}.weight")
        ours[f"mapping.fcs.{i}.bias"] = take(f"mapping.fc{i}.bias")
    if "mapping.w_avg" in sd:
        ours["mapping.w_avg"] = take("mapping.w_avg")
    use_noise = "synthesis.b4.conv1.noise_strength" in sd
    for k, res in enumerate(res_keys):
        src, dst = f"synthesis.b{res}", f"synthesis.blocks.{k}"
        if f"{src}.skip.weight" in sd:
            raise UserError(f"{what} uses the 'resnet' generator architecture; only 'skip' is supported")
        if f"{src}.torgb.weight" not in sd:
            raise UserError(f"{what} uses the 'orig' generator architecture (no {src}.torgb); only 'skip' is supported")
        layers = ["conv1"] if k == 0 else ["conv0", "conv1"]
        if k == 0:
            ours[f"{dst}.const"] = take(f"{src}.const")
        for layer in layers:
            for name in ("weight", "bias", "affine.weight", "affine.bias"):
                ours[f"{dst}.{layer}.{name}"] = take(f"{src}.{layer}.{name}")
            if use_noise:
                ours[f"{dst}.{layer}.noise_strength"] = take(f"{src}.{layer}.noise_strength").reshape(())
                ours[f"{dst}.{layer}.noise_const"] = take(f"{src}.{layer}.noise_const")
            if f"{src}.{layer}.resample_filter" in sd:
                _check_fir(take(f"{src}.{layer}.resample_filter"), f"{src}.{layer}")
        for name in ("weight", "bias", "affine.weight", "affine.bias"):
            ours[f"{dst}.torgb.{name}"] = take(f"{src}.torgb.{name}")
        if f"{src}.resample_filter" in sd:
            _check_fir(take(f"{src}.resample_filter"), src)
    leftover = sorted(k for k in sd if k not in used)
    if leftover:
        raise UserError(f"{what} has tensors this StyleGAN2 loader does not know (e.g. {', '.join(leftover[:3])}); "
                        "is it another architecture?")

    fc0 = attrs.get("mapping.fc0", {})
    lr_mlp = float(fc0.get("bias_gain", 0.01))
    if fc0.get("activation", "lrelu") != "lrelu":
        raise UserError(f"{what}: mapping activation {fc0.get('activation')!r} is not supported")
    clamp = attrs.get("synthesis.b4.conv1", {}).get("conv_clamp")
    last = n_map - 1
    channels = {res: ours[f"synthesis.blocks.{k}.conv1.weight"].shape[0] for k, res in enumerate(res_keys)}
    hidden = ours["mapping.fcs.0.weight"].shape[0]
    w_dim = ours[f"mapping.fcs.{last}.weight"].shape[0]
    cfg = StyleGAN2Config(resolution=resolution, z_dim=ours["mapping.fcs.0.weight"].shape[1], w_dim=w_dim,
                          mapping_layers=n_map, mapping_width=hidden if n_map > 1 and hidden != w_dim else None,
                          lr_mlp=lr_mlp, channels=channels, use_noise=use_noise,
                          conv_clamp=float(clamp) if clamp is not None else None,
                          img_channels=ours["synthesis.blocks.0.torgb.weight"].shape[0])
    return cfg, ours


def generator_from_nvlabs(data: Any, what: str = "checkpoint", key: str | None = None) -> Generator:
    """Build our Generator from an unpickled NVlabs snapshot (or a bare G_ema state dict)."""
    if isinstance(data, dict) and any(isinstance(v, PersistentObject) for v in data.values()):
        if key is None:
            key = next((k for k in ("G_ema", "G") if k in data), None)
        if key is None or key not in data:
            raise UserError(f"{what} has no generator entry {key or 'G_ema'!r} (has: {', '.join(map(str, data))})")
        obj = data[key]
        if not isinstance(obj, PersistentObject):
            raise UserError(f"{what}: {key!r} is not a network")
        sd, attrs = flatten_persistent(obj)
    elif isinstance(data, PersistentObject):
        sd, attrs = flatten_persistent(data)
    elif isinstance(data, dict):
        sd, attrs = data, {}
    else:
        raise UserError(f"{what} does not hold an NVlabs StyleGAN2 snapshot")
    cfg, ours = nvlabs_to_ours(sd, attrs, what)
    return _finish(cfg, ours, what)


# --------------------------------------------------------------------------- entry point

_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


def _torch_load_safe(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "disallowed content"
            raise UserError(f"refusing to load {path}: it holds Python objects beyond tensors "
                            f"({first[:200]})") from None
        except (RuntimeError, EOFError, ValueError, OSError, KeyError) as e:
            raise UserError(f"{path} is not a readable torch checkpoint "
                            f"(truncated or corrupt: {str(e)[:200]})") from None


def load_official(path: str | os.PathLike, key: str | None = None, lr_mlp: float | None = None) -> Generator:
    """Load a rosinality ``.pt`` or NVlabs ``.pkl`` StyleGAN2 generator.

    The format is detected from the content (zip = torch.save, otherwise a
    pickle read by the restricted unpickler). ``key`` picks the entry
    (default ``g_ema``/``G_ema``); ``lr_mlp`` overrides the mapping
    learning-rate multiplier for rosinality files, whose state dict does not
    record it (default 0.01, the value of every public model).
    """
    p = check_input_file(path, "checkpoint")
    what = f"checkpoint {p.name}"
    if zipfile.is_zipfile(p):
        data = _torch_load_safe(p)
    else:
        data = restricted_load(p)
        if isinstance(data, int) and data == _LEGACY_TORCH_MAGIC:  # legacy (pre-1.6) torch.save
            data = _torch_load_safe(p)
    if isinstance(data, PersistentObject) or (
            isinstance(data, dict) and any(isinstance(v, PersistentObject) for v in data.values())):
        return generator_from_nvlabs(data, what, key)
    if isinstance(data, dict):
        keys = set(map(str, data))
        if keys & {"g_ema", "g"} or "style.1.weight" in keys:
            return generator_from_rosinality(data, what, key, lr_mlp=lr_mlp if lr_mlp is not None else 0.01)
        if "mapping.fc0.weight" in keys:
            return generator_from_nvlabs(data, what)
        raise UserError(f"{what} is not a known StyleGAN2 checkpoint (top-level keys: {', '.join(sorted(keys)[:8])})")
    raise UserError(f"{what} is not a known StyleGAN2 checkpoint (holds a {type(data).__name__})")
