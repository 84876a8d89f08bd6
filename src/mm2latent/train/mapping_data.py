"""MappingNet's training set, derived from the generator itself (no captions).

For sample i: z_i from a generator keyed by (seed, i), w_i = G.mapping(z_i, psi),
x_i = G.synthesis(w_i) with constant noise; then the perception stack reads
x_i's controls and the encoders embed them
(:class:`~mm2latent.models.controls.ControlEncoders`).

Where z comes from (``source``):

* ``prior``: z_i ~ N(0, I), as for a GAN-trained StyleGAN2;
* ``posterior``: z_i ~ q(z | r_i), the image encoder's Gaussian for world render
  r_i of a cache (``renders``; i modulo its size). For the autoencoding world
  generator this is its aggregate posterior -- the region of z it was trained
  to decode -- so the images MappingNet learns from are on the generator's
  manifold even where its prior samples are not (see the generator report).
* ``photos``: real photos (``photos``: a CelebAMask-HQ tree or any image folder,
  :func:`mm2latent.datasets.open_photos`), the real-data route of the MM2Latent
  paper: w_i is the inversion of photo i (W+ from an e4e encoder, as the paper's
  targets are; else the image encoder and the mapping: W, with z), and the
  controls are read off the *photo* -- its annotated mask where the dataset has
  one, else the parser's -- so MappingNet learns to reach real faces' latents
  from real faces' controls. With ``captions`` (MM-CelebA-HQ ``text/<id>.txt``)
  a ``text_emb`` array holds the embedding of one caption per photo, chosen by
  (seed, i).

On disk (``OUT/``): ``meta.json`` (count, chunk size, seed, truncation, the
weights used, array names) and one ``chunk-XXXXX.npz`` per ``chunk`` samples
(plain arrays, read with ``allow_pickle=False``):

    z (n, z_dim) f32, w (n, w_dim) f32, one embedding array (n, D) f16 per registered
    control that can be read off images (``Control.data_key``: image_emb / mask_emb /
    sketch_emb / coeff_emb for the built-in ones), mask (n, M, M) u8, sketch (n, K, K) u8
    (1 = line), coeffs (n, 13) f32 (normalised units), attributes (n, A) f16 (probabilities)

Chunks are written atomically and skipped when present, so an interrupted
run resumes where it stopped, and ``shard=(i, n)`` makes process i of n do
every n-th chunk (run n processes on one OUT, then load).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..common.errors import UserError
from ..common.fileio import atomic_path, write_text_atomic
from ..common.progress import progress

#: the arrays every chunk holds besides the controls' embeddings (see :func:`data_arrays`)
BASE_ARRAYS = ("z", "w", "mask", "sketch", "coeffs", "attributes")


def data_arrays() -> tuple[str, ...]:
    """Every array of a chunk: the base ones and each registered control's embedding array
    (``Control.data_key``), so a plug-in control that can be read off images gets its own."""
    from ..models.controls import CONTROLS

    return BASE_ARRAYS[:2] + tuple(dict.fromkeys(c.data_key for c in CONTROLS.values())) + BASE_ARRAYS[2:]


#: the arrays of data made with the built-in controls
ARRAYS = ("z", "w", "image_emb", "mask_emb", "sketch_emb", "coeff_emb", "mask", "sketch", "coeffs", "attributes")


def chunk_z(seed: int, start: int, stop: int, z_dim: int) -> torch.Tensor:
    """Latents of samples start..stop-1, each from its own seeded generator (shard-independent)."""
    out = torch.empty(stop - start, z_dim)
    for k, i in enumerate(range(start, stop)):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        out[k] = torch.randn(z_dim, generator=g)
    return out


@torch.no_grad()
def synthesise_const(G, w: torch.Tensor) -> torch.Tensor:
    """G's image of W-space latents with constant noise: the one synthesis that the stored
    embeddings come from (make_chunk) and that re-embedding must repeat exactly."""
    return G.synthesis(G.broadcast(w), noise_mode="const")


def add_controls(parts: dict[str, list], controls, x: torch.Tensor, c: dict[str, torch.Tensor]) -> None:
    """Append one batch's arrays: every registered control's training embedding (those that can
    be read off images) and the derived controls themselves."""
    from ..models.controls import CONTROLS

    for control in CONTROLS.values():
        emb = control.training_embedding(controls, x, c)
        if emb is not None:
            parts.setdefault(control.data_key, []).append(emb.numpy().astype(np.float16))
    parts["mask"].append(c["mask"].numpy().astype(np.uint8))
    parts["sketch"].append(c["sketch"][:, 0].numpy().astype(np.uint8))
    parts["coeffs"].append(c["coeffs"].numpy().astype(np.float32))
    parts["attributes"].append(c["attributes"].numpy().astype(np.float16))


@torch.no_grad()
def make_chunk(G, controls, z: torch.Tensor, truncation: float, batch: int = 32) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {k: [] for k in BASE_ARRAYS}
    for a in range(0, len(z), batch):
        zb = z[a:a + batch]
        w = G.mapping(zb, truncation_psi=truncation)
        x = synthesise_const(G, w)
        parts["z"].append(zb.numpy())
        parts["w"].append(w.numpy())
        add_controls(parts, controls, x, controls.derive(x))
    return {k: np.concatenate(v) for k, v in parts.items()}


def posterior_z(encoder, renders, seed: int, start: int, stop: int) -> torch.Tensor:
    """z_i = mu + sigma * eps for renders start..stop-1 (modulo the cache size), eps keyed by (seed, i)."""
    n = len(renders)
    idx = [i % n for i in range(start, stop)]
    x = renders.batch(idx)["image"]
    # CachedWorldDataset.batch sorts its indices; restore the requested order
    order = np.argsort(np.argsort(np.asarray(idx), kind="stable"), kind="stable")
    x = x[torch.from_numpy(order)]
    if x.shape[-1] != encoder.config.size:
        x = torch.nn.functional.interpolate(x, size=(encoder.config.size,) * 2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        mu, logvar = encoder(x)
    eps = chunk_z(seed, start, stop, mu.shape[1])
    return mu + eps * (0.5 * logvar).exp()


def photo_inverter(weights: str | os.PathLike | None):
    """The inverter of a pipeline folder for real photos: its e4e/pSp encoder (W+) when it has
    one, else its image encoder (z, then the generator's mapping: W)."""
    from ..models.registry import default_weights_dir, load_optional

    d = Path(weights) if weights else default_weights_dir()
    inverter = load_optional(d, "e4e_encoder") or load_optional(d, "image_encoder")
    if inverter is None:
        raise UserError(f"--source photos needs an image inverter in {d}: an e4e encoder (mm2latent assemble "
                        "--encoder e4e_ffhq_encode.pt) or an image_encoder.safetensors")
    return inverter.eval()


def invert_photos(G, inverter, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(z or None, w) of photos ``x`` in [-1, 1]: W+ (B, num_ws, w_dim) from an e4e encoder, else
    the image encoder's posterior mean z and its mapping w (B, w_dim)."""
    if hasattr(inverter, "latent_avg"):  # an e4e / pSp encoder
        return None, inverter.encode(x)
    size = inverter.config.size
    x_enc = x if x.shape[-1] == size else torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mu, _ = inverter(x_enc)
    return mu, G.mapping(mu)


@torch.no_grad()
def photo_chunk(G, inverter, controls, photos, seed: int, start: int, stop: int, with_captions: bool = False,
                batch: int = 32) -> dict[str, np.ndarray]:
    """The arrays of :func:`make_chunk` for photos start..stop-1 of a real dataset: w = the
    photo's inversion (:func:`invert_photos`; z too with an image encoder), controls read off the
    photo (the annotated mask when there is one), plus ``text_emb`` of one caption per photo
    when ``with_captions``."""
    from ..common.imageio import image_to_tensor
    from ..models.controls import resize_labels

    parts: dict[str, list] = {k: [] for k in BASE_ARRAYS + (("text_emb",) if with_captions else ())}
    for a in range(start, stop, batch):
        samples = [photos[i] for i in range(a, min(stop, a + batch))]
        x = torch.stack([image_to_tensor(s.image) for s in samples])
        mu, w = invert_photos(G, inverter, x)
        c = controls.derive(x)
        mask = c["mask"]
        for k, s in enumerate(samples):  # the annotation, where the dataset has one, over the parser's guess
            if s.mask is not None:
                mask[k] = resize_labels(torch.from_numpy(s.mask.astype(np.int64))[None], mask.shape[-1])[0]
        if mu is not None:
            parts["z"].append(mu.numpy())
        parts["w"].append(w.numpy())
        add_controls(parts, controls, x, {**c, "mask": mask})
        if with_captions:
            texts = []
            for k, s in enumerate(samples):
                if not s.captions:
                    raise UserError(f"photo {s.key} has no captions under the --captions folder")
                pick = np.random.default_rng([seed, a + k]).integers(len(s.captions))
                texts.append(s.captions[int(pick)])
            parts["text_emb"].append(controls.embed_text(texts).numpy().astype(np.float16))
    return {k: np.concatenate(v) for k, v in parts.items() if v}


def generate_mapping_data(out: str | os.PathLike, num: int, weights: str | None = None, seed: int = 0,
                          truncation: float = 1.0, chunk: int = 256, shard: tuple[int, int] = (0, 1),
                          batch: int = 32, source: str = "prior", renders: str | None = None,
                          photos: str | None = None, captions: str | None = None) -> Path:
    from ..models.registry import load_components

    if num < 1 or chunk < 1:
        raise UserError("--num and --chunk must be positive")
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")
    if source not in ("prior", "posterior", "photos"):
        raise UserError("--source must be 'prior', 'posterior' or 'photos'")
    dataset = None
    if source == "photos":
        from ..datasets import open_photos

        if not photos:
            raise UserError("--source photos needs --photos ROOT (a CelebAMask-HQ tree or a folder of photos)")
        dataset = open_photos(photos, captions=captions)
        num = min(num, len(dataset))
    elif captions:
        raise UserError("--captions goes with --source photos")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    comp = load_components(weights, need=("generator", "controls") + (("image_encoder",) if source == "posterior" else ()))
    inverter = photo_inverter(weights) if source == "photos" else None
    G, controls = comp["generator"], comp["controls"]
    cache = None
    if source == "posterior":
        from ..world.cache import CachedWorldDataset

        if not renders:
            raise UserError("--source posterior needs --renders CACHE_DIR (world renders to encode)")
        cache = CachedWorldDataset(renders)
    if dataset is not None:
        dataset.size = G.cfg.resolution  # photos at the generator's size, as its renders are
    arrays = [k for k in data_arrays() if not (k == "z" and inverter is not None and hasattr(inverter, "latent_avg"))]
    arrays += ["text_emb"] if captions else []
    meta = {"num": num, "chunk": chunk, "seed": seed, "truncation": truncation, "arrays": arrays,
            "source": source, "renders": str(renders) if renders else None,
            "photos": str(photos) if photos else None, "captions": str(captions) if captions else None,
            "weights": str(weights or "shipped"), "z_dim": G.z_dim, "w_dim": G.w_dim,
            "generator": comp.get("generator_info", {})}
    mp = out / "meta.json"
    if mp.exists():
        old = json.loads(mp.read_text())
        diff = [k for k in ("num", "chunk", "seed", "truncation", "z_dim", "w_dim", "source")
                if old.get(k, "prior" if k == "source" else None) != meta[k]]
        if diff:
            raise UserError(f"{out} holds data made with other settings ({', '.join(diff)}); use another --out")
    else:  # every shard may write it (same content, atomic)
        write_text_atomic(mp, json.dumps(meta, indent=1) + "\n")
    chunks = [k for k in range((num + chunk - 1) // chunk) if k % n == i]
    todo = [k for k in chunks if not (out / f"chunk-{k:05d}.npz").exists()]
    bar = progress(total=len(todo) * chunk, desc=f"mapping data {i}/{n}", unit="face")
    for k in todo:
        a, b = k * chunk, min(num, (k + 1) * chunk)
        if dataset is not None:
            arrays = photo_chunk(G, inverter, controls, dataset, seed, a, b,
                                 with_captions=bool(captions), batch=batch)
        else:
            z = chunk_z(seed, a, b, G.z_dim) if cache is None else posterior_z(comp["image_encoder"], cache, seed, a, b)
            arrays = make_chunk(G, controls, z, truncation, batch)
        with atomic_path(out / f"chunk-{k:05d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        bar.update(b - a)
    bar.close()
    return out


def complete_data_meta(root: Path) -> tuple[dict, int]:
    """(meta.json, number of chunks) of a finished MappingNet data directory; refuses incomplete data."""
    if not (root / "meta.json").exists():
        raise UserError(f"{root} is not a MappingNet data directory (no meta.json)")
    meta = json.loads((root / "meta.json").read_text())
    n_chunks = (meta["num"] + meta["chunk"] - 1) // meta["chunk"]
    missing = [k for k in range(n_chunks) if not (root / f"chunk-{k:05d}.npz").exists()]
    if missing:
        raise UserError(f"{root} is incomplete: {len(missing)} of {n_chunks} chunks missing (rerun the generation)")
    return meta, n_chunks


def load_mapping_data(root: str | os.PathLike, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """All chunks concatenated (the arrays ``names``, default every one the data holds); refuses
    incomplete data and names an array it lacks."""
    root = Path(root)
    meta, n_chunks = complete_data_meta(root)
    held = tuple(meta.get("arrays", ARRAYS))
    names = held if names is None else names
    missing = [n for n in names if n not in held]
    if missing:
        raise UserError(f"{root} holds no {missing[0]} array (made before that control was registered, or it "
                        "cannot be read off images); make the data again")
    parts: dict[str, list] = {k: [] for k in names}
    for k in range(n_chunks):
        with np.load(root / f"chunk-{k:05d}.npz", allow_pickle=False) as f:
            for name in names:
                parts[name].append(f[name])
    return {k: np.concatenate(v) for k, v in parts.items()}


#: control -> (stored array it is read from, embedding array it produces, model kind)
REEMBEDDABLE = {"mask": ("mask", "mask_emb", "mask_ae"), "sketch": ("sketch", "sketch_emb", "sketch_ae"),
                "coeffs": ("coeffs", "coeff_emb", "coeff_ae")}


@torch.no_grad()
def reembed_mapping_data(data: str | os.PathLike, out: str | os.PathLike, encoders: dict[str, str],
                         batch: int = 256, generator: str | os.PathLike | None = None) -> Path:
    """A copy of MappingNet data ``data`` in ``out`` with the embeddings of the given controls
    recomputed by new autoencoders (``encoders``: control -> weights file), read from the stored
    controls (the parser mask, the sketch, the coefficients of each G(w)). A new spatial
    autoencoder then needs no generator pass. ``encoders["image"]``, a new text/image encoder,
    recomputes ``image_emb``: the stored w are synthesised again exactly as
    :func:`make_chunk` did (constant noise) by ``generator`` (a generator weights file; the
    default is the shipped one, which must be the generator the data was made with), and the
    new image tower embeds those images. ``data`` is never modified; chunks are written
    atomically and skipped when present, so an interrupted run resumes."""
    from ..models.controls import resize_labels, resize_sketch
    from ..models.registry import component_file, default_weights_dir, load_module_file

    data, out = Path(data), Path(out)
    if not encoders:
        raise UserError("say which embeddings to recompute (--mask-ae, --sketch-ae, --coeff-ae or --encoder)")
    if data.resolve() == out.resolve():
        raise UserError("--out must differ from the source data (the source is never modified)")
    meta, n_chunks = complete_data_meta(data)
    models = {}
    for control, path in encoders.items():
        if control == "image":
            continue
        if control not in REEMBEDDABLE:
            raise UserError(f"cannot re-embed {control!r}; choose from {', '.join(REEMBEDDABLE)} or image")
        models[control] = load_module_file(path, REEMBEDDABLE[control][2]).eval()
    image_models = None
    if "image" in encoders:
        from ..models.clip import load_clip
        from ..models.stylegan2 import load_generator

        gen_path = generator or component_file(default_weights_dir(), "generator")
        image_models = (load_generator(gen_path).eval(), load_clip(encoders["image"]).eval())
    out.mkdir(parents=True, exist_ok=True)
    new_meta = {**meta, "reembedded": {**meta.get("reembedded", {}), **{c: str(p) for c, p in encoders.items()}},
                "reembedded_from": str(data)}
    write_text_atomic(out / "meta.json", json.dumps(new_meta, indent=1) + "\n")
    todo = [k for k in range(n_chunks) if not (out / f"chunk-{k:05d}.npz").exists()]
    bar = progress(total=len(todo), desc="re-embedding", unit="chunk")
    for k in todo:
        with np.load(data / f"chunk-{k:05d}.npz", allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        for control, model in models.items():
            src, dst, _ = REEMBEDDABLE[control]
            x = torch.from_numpy(arrays[src])
            embs = []
            for a in range(0, len(x), batch):
                xb = x[a:a + batch]
                if control == "mask":
                    xb = resize_labels(xb.long(), model.config.size)
                elif control == "sketch":
                    xb = resize_sketch(xb.float()[:, None], model.config.size)
                embs.append(model.encode(xb.float() if control == "coeffs" else xb).numpy())
            arrays[dst] = np.concatenate(embs).astype(arrays[dst].dtype)
        if image_models is not None:
            arrays["image_emb"] = resynthesised_image_embeddings(*image_models, arrays["w"]).astype(
                arrays["image_emb"].dtype)
        with atomic_path(out / f"chunk-{k:05d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        bar.update(1)
    bar.close()
    return out


@torch.no_grad()
def resynthesised_image_embeddings(G, encoder, w: np.ndarray, batch: int = 32) -> np.ndarray:
    """Image embeddings of G.synthesis(w) with constant noise, as :func:`make_chunk` computes them."""
    embs = []
    for a in range(0, len(w), batch):
        wb = torch.from_numpy(np.ascontiguousarray(w[a:a + batch])).float()
        x = synthesise_const(G, wb)
        embs.append(encoder.encode_image(x.float()).numpy())
    return np.concatenate(embs)
