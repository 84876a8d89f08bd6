"""Assembling a pipeline folder from parts (``mm2latent assemble``).

A pipeline folder is a weights directory (:mod:`.registry`): one safetensors +
JSON pair per part, under the registry's file names, plus ``pipeline.json``
(the parts, their kinds and where each came from). Any subset of the parts may
be given; :meth:`mm2latent.Pipeline.from_pretrained` loads the folder and a
missing part is reported when it is used (:mod:`.parts`).

Sources, by option (see :data:`OPTIONS`):

* ``generator``: our ``generator.safetensors``, a rosinality ``.pt`` / NVlabs
  ``.pkl`` (:func:`~.official.load_official`), or an e4e/pSp ``.pt`` whose
  decoder is taken;
* ``encoder`` (image -> W+): an e4e/pSp ``.pt`` (:func:`~.e4e.load_e4e`,
  stored as ``e4e_encoder``), or our ``image_encoder`` / ``wplus_inverter`` /
  ``e4e_encoder`` file;
* ``text_encoder``: a FaRL / OpenAI CLIP checkpoint (:func:`~.farl_loader.load_farl`)
  or our ``encoder.safetensors``;
* ``parser``: a face-parsing.PyTorch BiSeNet ``.pth`` (:func:`~.bisenet.load_bisenet`,
  stored as kind ``bisenet_parser``) or our ``parser.safetensors``;
* ``mapping_net``, ``mask_ae``, ``sketch_ae``, ``coeff_ae``, ``analyzer``,
  ``latent_prior``: our files only.

Checkpoints in other formats are read with the weights-only / restricted
unpicklers: nothing from a file is ever run. Files of our format are checked by
loading them and then copied byte for byte (their JSON keeps training notes
such as MappingNet's text-noise and guidance defaults). Everything is written
to a temporary folder beside ``out`` and moved into place at the end; an error
leaves ``out`` as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.errors import UserError
from ..common.fileio import check_input_file

MANIFEST = "pipeline.json"
MANIFEST_FORMAT = "mm2latent-pipeline"
MANIFEST_VERSION = 1
#: the parts generation and editing use (pipeline.json lists those a folder lacks; "inverter" when it has none
#: of INVERTERS)
CORE_PARTS = ("generator", "encoder", "parser", "analyzer", "mask_ae", "sketch_ae", "coeff_ae", "mapping_net")
INVERTERS = ("wplus_inverter", "e4e_encoder", "image_encoder")


@dataclass(frozen=True)
class Option:
    flag: str          # the CLI option
    formats: str       # what it accepts (help text)


#: assemble() keyword -> its CLI option and what it accepts
OPTIONS: dict[str, Option] = {
    "generator": Option("--generator", "our generator.safetensors, a rosinality .pt, an NVlabs .pkl, or an e4e/pSp "
                        ".pt (its decoder)"),
    "encoder": Option("--encoder", "an e4e/pSp .pt, or our image_encoder / wplus_inverter / e4e_encoder .safetensors"),
    "text_encoder": Option("--text-encoder", "a FaRL (or OpenAI CLIP) checkpoint, or our encoder.safetensors"),
    "parser": Option("--parser", "a face-parsing.PyTorch BiSeNet .pth (79999_iter.pth), or our parser.safetensors"),
    "mapping_net": Option("--mapping-net", "our mapping_net.safetensors"),
    "mask_ae": Option("--mask-ae", "our mask_ae.safetensors"),
    "sketch_ae": Option("--sketch-ae", "our sketch_ae.safetensors"),
    "coeff_ae": Option("--coeff-ae", "our coeff_ae.safetensors"),
    "analyzer": Option("--analyzer", "our analyzer.safetensors"),
    "latent_prior": Option("--latent-prior", "our latent_prior.safetensors (the sampling prior beside a generator)"),
}
#: our-format options: option -> the kinds its file may hold
OUR_KINDS = {"mapping_net": ("mapping_net",), "mask_ae": ("mask_ae",), "sketch_ae": ("sketch_ae",),
             "coeff_ae": ("coeff_ae",), "analyzer": ("analyzer",), "latent_prior": ("latent_prior",),
             "encoder": ("e4e_encoder", "wplus_inverter", "image_encoder"), "parser": ("parser", "bisenet_parser"),
             "text_encoder": ("clip",), "generator": ("stylegan2-generator",)}


@dataclass
class Part:
    """One loaded part, ready to be written: ``name`` is its component (file stem)."""

    name: str
    kind: str
    module: Any
    source: dict[str, Any]
    copy_from: Path | None = None  # our format: copy this .safetensors (and its .json) as is


def _ours(path: Path) -> bool:
    return path.suffix in (".safetensors", ".json")


def _pair(path: Path) -> tuple[Path, Path]:
    """(.safetensors, .json) of an our-format file given as either."""
    from ..common.checkpoint import config_path

    js = config_path(path)
    return js.with_suffix(".safetensors"), js


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _describe(path: Path, option: str, fmt: str) -> dict[str, Any]:
    return {"option": option, "file": str(path.resolve()), "format": fmt, "sha256": _sha256(path)}


def _load_ours(option: str, path: Path) -> Part:
    from .clip import load_clip
    from .registry import load_module_file, stored_kind
    from .stylegan2 import load_generator

    st, js = _pair(path)
    check_input_file(st, "weights")
    check_input_file(js, "weights config")
    kind = stored_kind(st)
    allowed = OUR_KINDS[option]
    if kind not in allowed:
        raise UserError(f"{st} holds a {kind or 'unknown'!r} model; {OPTIONS[option].flag} takes "
                        f"{' / '.join(allowed)} files ({OPTIONS[option].formats})")
    if kind == "stylegan2-generator":
        module, name = load_generator(st), "generator"
    elif kind == "clip":
        module, name = load_clip(st), "encoder"
    else:
        module = load_module_file(st, kind)
        name = "parser" if option == "parser" else kind
    return Part(name, kind, module, _describe(st, OPTIONS[option].flag, f"mm2latent {kind}"), copy_from=st)


class _Loader:
    """Reads each source once (an e4e .pt given as --generator and --encoder is read once)."""

    def __init__(self):
        self._e4e: dict[Path, tuple] = {}

    def e4e(self, path: Path, data: Any = None):
        """(encoder, generator, latent_avg) of an e4e/pSp file; ``data``: its contents, already read."""
        from .e4e import e4e_from_checkpoint, load_e4e

        key = path.resolve()
        if key not in self._e4e:
            self._e4e[key] = load_e4e(path) if data is None else e4e_from_checkpoint(data, f"checkpoint {path}")
        return self._e4e[key]

    def load(self, option: str, path: Path) -> Part:
        flag = OPTIONS[option].flag
        if _ours(path):
            return _load_ours(option, path)
        check_input_file(path, "checkpoint")
        if option == "generator":
            return self._generator(path, flag)
        if option == "encoder":
            from .e4e import E4EImageEncoder

            encoder, _, _ = self.e4e(path)
            return Part("e4e_encoder", "e4e_encoder", E4EImageEncoder.from_encoder(encoder),
                        _describe(path, flag, f"{encoder.cfg.kind} checkpoint (encoder)"))
        if option == "text_encoder":
            from .farl_loader import load_farl

            return Part("encoder", "clip", load_farl(path), _describe(path, flag, "FaRL/CLIP checkpoint"))
        if option == "parser":
            from .bisenet import StoredBiSeNetParser, load_bisenet

            return Part("parser", "bisenet_parser", StoredBiSeNetParser.from_parser(load_bisenet(path)),
                        _describe(path, flag, "face-parsing.PyTorch BiSeNet checkpoint"))
        raise UserError(f"{path} is not a .safetensors file: {flag} takes {OPTIONS[option].formats}")

    def _generator(self, path: Path, flag: str) -> Part:
        import zipfile

        from .official import load_official
        from .torch_files import read_torch_file

        data = None
        if path.suffix != ".pkl":  # a torch.save file: an e4e/pSp checkpoint, or one for load_official
            try:
                data = read_torch_file(path, "checkpoint")
            except UserError as e:
                if zipfile.is_zipfile(path) and "refusing" not in str(e):
                    raise  # damaged
                # beyond the weights-only reader (e.g. rosinality's argparse.Namespace, a legacy file):
                # load_official's restricted unpickler decides
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict) and "g_ema" not in data and any(
                str(k).startswith("decoder.") for k in data["state_dict"]):
            encoder, G, _ = self.e4e(path, data)
            return Part("generator", "stylegan2-generator", G,
                        _describe(path, flag, f"{encoder.cfg.kind} checkpoint (decoder)"))
        del data
        G = load_official(path)
        return Part("generator", "stylegan2-generator", G, _describe(path, flag, "official StyleGAN2 checkpoint"))


def _check_together(parts: dict[str, Part]) -> None:
    """Parts that cannot work together are refused now, naming both options."""
    g = parts.get("generator")
    G = g.module if g else None
    flags = {o: OPTIONS[o].flag for o in OPTIONS}
    enc = parts.get("encoder")
    if G is not None and enc is not None:
        m = enc.module
        if enc.kind == "e4e_encoder":
            shape = (m.n_styles, m.style_dim)
        elif enc.kind == "wplus_inverter":
            shape = (m.config.num_ws, m.config.w_dim)
        else:
            shape = None
            if m.config.z_dim != G.z_dim:
                raise UserError(f"{flags['encoder']} gives {m.config.z_dim}-d z but the {flags['generator']} takes "
                                f"{G.z_dim}-d z: they were not made together")
        if shape is not None and shape != (G.num_ws, G.w_dim):
            raise UserError(f"{flags['encoder']} makes {shape[0]}x{shape[1]} W+ codes but the {flags['generator']} "
                            f"takes {G.num_ws}x{G.w_dim} (num_ws x w_dim): they were not made together")
    mp = parts.get("mapping_net")
    if mp is not None:
        cfg = mp.module.config
        if G is not None and cfg.w_dim != G.w_dim:
            raise UserError(f"{flags['mapping_net']} outputs {cfg.w_dim}-d w but the {flags['generator']} takes "
                            f"{G.w_dim}-d w: they were not trained together")
        dims = cfg.dims
        te = parts.get("text_encoder")
        if te is not None and "text" in dims and te.module.config.embed_dim != dims["text"]:
            raise UserError(f"{flags['text_encoder']} embeds in {te.module.config.embed_dim} dimensions but the "
                            f"{flags['mapping_net']} takes {dims['text']}-d text embeddings")
        for opt, modality in (("mask_ae", "mask"), ("sketch_ae", "sketch"), ("coeff_ae", "coeffs")):
            p = parts.get(opt)
            if p is not None and modality in dims and p.module.config.latent_dim != dims[modality]:
                raise UserError(f"{flags[opt]} embeds in {p.module.config.latent_dim} dimensions but the "
                                f"{flags['mapping_net']} takes {dims[modality]}-d {modality} embeddings")
    lp = parts.get("latent_prior")
    if lp is not None and G is not None and lp.module.config.dim != G.w_dim:
        raise UserError(f"{flags['latent_prior']} is {lp.module.config.dim}-d but the {flags['generator']}'s w is "
                        f"{G.w_dim}-d: they were not made together")


def _write_part(part: Part, d: Path, half: bool) -> None:
    import torch  # here, not at the top: ``mm2latent --help`` reads OPTIONS without paying for torch

    from .clip import save_clip
    from .registry import save_module
    from .stylegan2 import save_generator

    if part.copy_from is not None:
        st, js = _pair(part.copy_from)
        shutil.copyfile(st, d / f"{part.name}.safetensors")
        shutil.copyfile(js, d / f"{part.name}.json")
        return
    extra = {"source": part.source}
    if part.kind == "stylegan2-generator":
        save_generator(d / part.name, part.module, dtype=torch.float16 if half else None, extra=extra)
    elif part.kind == "clip":
        save_clip(part.module, d / part.name, meta=extra, dtype=torch.float16 if half else torch.float32)
    else:
        save_module(part.module, d / f"{part.name}.safetensors", half=half, extra=extra)


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder unless ``force`` -- and even then one
    holding anything but a pipeline folder's files (nothing else is ever deleted)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not out.is_dir():
        return
    entries = sorted(out.iterdir())
    if not entries:
        return
    if not force:
        raise UserError(f"--out {out} is not empty; give --force to replace it (or choose another folder)")
    foreign = [e.name for e in entries if e.is_dir() or e.suffix not in (".safetensors", ".json")]
    if foreign:
        raise UserError(f"--out {out} holds files that are not pipeline parts ({', '.join(foreign[:3])}); "
                        "refusing to replace it even with --force")


def assemble(out: str | os.PathLike, sources: dict[str, str | os.PathLike | None], force: bool = False,
             half: bool = False) -> dict[str, Any]:
    """Write the pipeline folder ``out`` from ``sources`` (keys of :data:`OPTIONS`; None: left out);
    returns the manifest written as ``pipeline.json``. ``half``: converted parts in float16
    (our-format parts are copied as they are). Every error is one line naming the option."""
    from ..common.version import __version__
    from .registry import COMPONENT_FILES

    given = {k: Path(v) for k, v in sources.items() if v is not None}
    unknown = set(given) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}")
    if not given:
        raise UserError("give at least one part: " + ", ".join(o.flag for o in OPTIONS.values()))
    out = Path(out)
    check_out_dir(out, force)
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write in {parent}")

    loader = _Loader()
    parts: dict[str, Part] = {}
    for option, path in given.items():
        try:
            parts[option] = loader.load(option, path)
        except UserError as e:  # the message names the file already, or gets it
            flag = OPTIONS[option].flag
            raise UserError(f"{flag}: {e}" if str(path) in str(e) or path.name in str(e)
                            else f"{flag} {path}: {e}") from None
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:  # a damaged file we did not foresee
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"{OPTIONS[option].flag} {path}: cannot read it ({msg})") from None
    _check_together(parts)

    manifest = {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "created_by": f"mm2latent assemble {__version__}",
        "dtype": "float16" if half else "float32 (converted parts; copied parts as they were)",
        "parts": {p.name: {"file": COMPONENT_FILES.get(p.name, f"{p.name}.safetensors"), "kind": p.kind,
                           "source": p.source} for p in parts.values()},
    }
    have = set(manifest["parts"])
    manifest["missing"] = [n for n in CORE_PARTS if n not in have] + ([] if have & set(INVERTERS) else ["inverter"])

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.assembling-", dir=parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; the result is an ordinary folder
        for part in parts.values():
            _write_part(part, tmp, half)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", "utf-8")
        _swap_in(tmp, out, parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _swap_in(tmp: Path, out: Path, parent: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``; an existing ``out`` is moved aside first and
    removed only once the new one is in place (put back if the move fails)."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
        old.rmdir()
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError as e:
        if old is not None:
            os.replace(old, out)
        raise UserError(f"--out {out}: cannot move the new folder into place: {e.strerror or e}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
