"""CLIP / FaRL text and image towers with OpenAI CLIP's state-dict layout.

FaRL (Zheng et al., CVPR 2022) is an OpenAI-CLIP ViT-B/16 trained on
LAION-Face; its checkpoints hold exactly the CLIP parameter names, so one
module serves three uses:

* :meth:`CLIPConfig.farl_vit_b16` - the real FaRL / CLIP ViT-B/16 shapes,
  filled by :mod:`mm2latent.models.farl_loader` from a ``.pth`` file;
* :meth:`CLIPConfig.world_small` - a small model trained on the Face World
  on CPU and shipped with the package;
* any other ViT CLIP whose shapes :func:`~mm2latent.models.farl_loader.config_from_state_dict`
  can read.

Parameter names (all of them, nothing else)::

    positional_embedding, text_projection, logit_scale,
    token_embedding.weight, ln_final.{weight,bias},
    transformer.resblocks.N.{ln_1,ln_2}.{weight,bias},
    transformer.resblocks.N.attn.{in_proj_weight,in_proj_bias},
    transformer.resblocks.N.attn.out_proj.{weight,bias},
    transformer.resblocks.N.mlp.{c_fc,c_proj}.{weight,bias},
    visual.{class_embedding,positional_embedding,proj}, visual.conv1.weight,
    visual.{ln_pre,ln_post}.{weight,bias}, visual.transformer.resblocks.N.(as above)

The computation is CLIP's: pre-LN residual attention blocks with QuickGELU
MLPs, a causal mask in the text tower, text pooled at the end-of-text token
(the largest token id), image pooled at the class token, both projected and
(here) L2-normalised.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import UserError

#: OpenAI CLIP image normalisation (FaRL uses the same numbers)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CHECKPOINT_KIND = "clip"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------


@dataclass
class CLIPConfig:
    """Shapes of a ViT CLIP, named as in OpenAI's ``CLIP.__init__``.

    The vision tower has ``vision_width // 64`` heads, as in CLIP.
    """

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 16
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12

    @classmethod
    def farl_vit_b16(cls) -> CLIPConfig:
        """FaRL-Base-Patch16 == OpenAI CLIP ViT-B/16 (149.6M parameters)."""
        return cls(
            embed_dim=512,
            image_resolution=224,
            vision_layers=12,
            vision_width=768,
            vision_patch_size=16,
            context_length=77,
            vocab_size=49408,
            transformer_width=512,
            transformer_heads=8,
            transformer_layers=12,
        )

    @classmethod
    def world_small(cls) -> CLIPConfig:
        """Small CLIP for the Face World, trainable on two CPU cores.

        Same tokenizer, context length and embedding size (512) as FaRL so the
        rest of the pipeline (MappingNet input of 512 + spatial) is unchanged.
        Images are seen at the renders' 128x128 as an 8x8 grid of 16-px patches
        (the first world model saw 64x64 as 4x4 patches and its image
        embeddings carried no trace of eyeglasses or smiles; 128/16 costs the
        same per image as 64/8, measured, and keeps the thin strokes those
        attributes are drawn with); widths are 128. The text tower's
        49,408-row token table dominates the size (6.3M of ~8.5M parameters),
        so the shipped fp16 file is ~17 MB.
        """
        return cls(
            embed_dim=512,
            image_resolution=128,
            vision_layers=4,
            vision_width=128,
            vision_patch_size=16,
            context_length=77,
            vocab_size=49408,
            transformer_width=128,
            transformer_heads=2,
            transformer_layers=4,
        )

    @property
    def vision_heads(self) -> int:
        return max(1, self.vision_width // 64)

    @property
    def grid_size(self) -> int:
        return self.image_resolution // self.vision_patch_size

    def validate(self) -> CLIPConfig:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UserError(f"CLIP config: {f.name} must be a positive integer, got {v!r}")
        if self.image_resolution % self.vision_patch_size:
            raise UserError(
                f"CLIP config: image_resolution {self.image_resolution} is not a multiple of "
                f"vision_patch_size {self.vision_patch_size}"
            )
        if self.vision_width % self.vision_heads:
            raise UserError(
                f"CLIP config: vision_width {self.vision_width} is not divisible into {self.vision_heads} heads"
            )
        if self.transformer_width % self.transformer_heads:
            raise UserError(
                f"CLIP config: transformer_width {self.transformer_width} is not divisible by "
                f"transformer_heads {self.transformer_heads}"
            )
        if self.context_length < 2:
            raise UserError("CLIP config: context_length must be at least 2")
        return self

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d))
        if missing:
            raise UserError(f"CLIP config lacks {', '.join(missing)}")
        return cls(**{k: d[k] for k in names}).validate()


# --------------------------------------------------------------------------
# building blocks (names follow OpenAI CLIP so the state dicts line up)
# --------------------------------------------------------------------------


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (as CLIP does for fp16 weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    ``in_proj_weight`` stacks the query, key and value projections (3D, D);
    each is split into ``heads`` consecutive chunks of D / heads rows.
    Inputs are batch-first (B, L, D).
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} not divisible by {heads} heads")
        self.width = width
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool = False):
        super().__init__()
        self.width = width
        self.layers = layers
        self.causal = causal
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.resblocks:
            x = blk(x, causal=self.causal)
        return x


class VisionTransformer(nn.Module):
    """CLIP's ViT: patch conv (no bias), class token, ln_pre, blocks, ln_post, proj."""

    def __init__(self, resolution: int, patch: int, width: int, layers: int, heads: int, out_dim: int):
        super().__init__()
        self.input_resolution = resolution
        self.patch_size = patch
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        n_tokens = (resolution // patch) ** 2 + 1
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(n_tokens, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, causal=False)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.input_resolution
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != r or x.shape[3] != r:
            raise UserError(f"the image tower expects (B, 3, {r}, {r}) tensors, got {tuple(x.shape)}")
        x = self.conv1(x.to(self.conv1.weight.dtype))  # B, W, g, g
        x = x.flatten(2).transpose(1, 2)  # B, g*g, W
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        x = self.ln_post(x[:, 0, :])
        return x @ self.proj


# --------------------------------------------------------------------------
# image preprocessing
# --------------------------------------------------------------------------


def _array_to_unit_float(a: np.ndarray) -> torch.Tensor:
    """One HWC / HW / BHWC integer array -> (B, 3, H, W) float in [0, 1]."""
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    if a.dtype == np.uint8:
        scale = 255.0
    elif a.dtype == np.uint16:
        scale = 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        raise UserError("float image arrays are ambiguous; pass uint8 arrays (0..255) or float tensors in [-1, 1]")
    else:
        raise UserError(f"unsupported image array dtype {a.dtype}; expected uint8 or uint16")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise UserError(f"image arrays must be (H, W), (H, W, C) or (B, H, W, C); got shape {a.shape}")
    c = a.shape[-1]
    t = torch.from_numpy(np.array(a, copy=True)).to(torch.float32) / scale
    t = t.permute(0, 3, 1, 2)  # B, C, H, W
    if c == 1:
        t = t.expand(-1, 3, -1, -1)
    elif c == 2:  # grey + alpha, composited on white like mm2latent.common.imageio
        g, al = t[:, :1], t[:, 1:2]
        t = (g * al + (1 - al)).expand(-1, 3, -1, -1)
    elif c == 4:
        rgb, al = t[:, :3], t[:, 3:4]
        t = rgb * al + (1 - al)
    elif c != 3:
        raise UserError(f"image arrays must have 1, 2, 3 or 4 channels, got {c}")
    if min(t.shape[-2:]) < 1:
        raise UserError(f"empty image of shape {a.shape}")
    return t.contiguous()


def _to_unit_batch(images: Any) -> tuple[torch.Tensor, bool]:
    """Anything image-like -> ((B, 3, H, W) tensor in [0, 1], came_from_8bit_file)."""
    from PIL import Image

    from ..common.imageio import load_image, to_rgb

    if isinstance(images, (str, os.PathLike)):
        return _array_to_unit_float(load_image(images)), True
    if isinstance(images, Image.Image):
        return _array_to_unit_float(np.asarray(to_rgb(images), dtype=np.uint8)), True
    if isinstance(images, np.ndarray):
        return _array_to_unit_float(images), True
    if isinstance(images, torch.Tensor):
        if not images.is_floating_point():
            return _array_to_unit_float(images.detach().cpu().numpy()), True
        x = images
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise UserError(
                f"float image tensors must be (3, H, W) or (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}"
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x + 1.0) * 0.5, False
    raise UserError(f"cannot read images from a {type(images).__name__}")


def _resize_crop(x: torch.Tensor, resolution: int, clamp: bool) -> torch.Tensor:
    """CLIP's Resize(resolution, bicubic) + CenterCrop(resolution) on (B, 3, H, W)."""
    h, w = x.shape[-2:]
    if h != resolution or w != resolution:
        short, long = (h, w) if h <= w else (w, h)
        if short != resolution:
            new_long = int(resolution * long / short)  # torchvision's rounding
            size = (resolution, new_long) if h <= w else (new_long, resolution)
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
            if clamp:  # PIL output is 8-bit; stay in range like it does
                x = x.clamp(0.0, 1.0)
        h, w = x.shape[-2:]
        top = int(round((h - resolution) / 2.0))
        left = int(round((w - resolution) / 2.0))
        x = x[..., top : top + resolution, left : left + resolution]
    return x


def preprocess_images(
    images: Any,
    resolution: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Images -> normalised (B, 3, resolution, resolution) tensor for the image tower.

    Accepts: a float tensor (3, H, W) / (B, 3, H, W) in the generator's range
    [-1, 1] (this path is differentiable and batched, no clamping); uint8 (or
    uint16) arrays/tensors (H, W), (H, W, C), (B, H, W, C); PIL images; image
    file paths; or a list mixing these (sizes may differ). Then CLIP's
    preprocessing: bicubic antialiased resize of the short side to
    ``resolution``, centre crop, and CLIP mean/std normalisation.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise UserError("no images given")
        outs = [preprocess_images(im, resolution, device=device, dtype=dtype) for im in images]
        return torch.cat(outs, dim=0)
    x, from_8bit = _to_unit_batch(images)
    if device is not None:
        x = x.to(device)
    x = x.to(dtype)
    x = _resize_crop(x, resolution, clamp=from_8bit)
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------


class CLIP(nn.Module):
    """Text and image towers of CLIP / FaRL.

    ``encode_text`` and ``encode_image`` return L2-normalised (B, embed_dim)
    features (``normalize=False`` gives the raw projections, as CLIP's own
    methods do); ``forward(images, texts)`` returns CLIP's
    ``(logits_per_image, logits_per_text)``.
    """

    def __init__(self, config: CLIPConfig | None = None):
        super().__init__()
        cfg = (config or CLIPConfig.world_small()).validate()
        self.config = cfg
        self.visual = VisionTransformer(
            cfg.image_resolution,
            cfg.vision_patch_size,
            cfg.vision_width,
            cfg.vision_layers,
            cfg.vision_heads,
            cfg.embed_dim,
        )
        self.transformer = Transformer(
            cfg.transformer_width, cfg.transformer_layers, cfg.transformer_heads, causal=True
        )
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.transformer_width))
        self.ln_final = LayerNorm(cfg.transformer_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.transformer_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))
        if self.text_projection.device.type != "meta":
            self.initialize_parameters()

    # -- initialisation (CLIP's scheme) ------------------------------------
    @torch.no_grad()
    def initialize_parameters(self) -> None:
        cfg = self.config
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.logit_scale.fill_(math.log(1 / 0.07))
        for tower in (self.transformer, self.visual.transformer):
            w = tower.width
            attn_std = w**-0.5
            proj_std = w**-0.5 * (2 * tower.layers) ** -0.5
            fc_std = (2 * w) ** -0.5
            for blk in tower.resblocks:
                nn.init.normal_(blk.attn.in_proj_weight, std=attn_std)
                blk.attn.in_proj_bias.zero_()
                nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
                blk.attn.out_proj.bias.zero_()
                nn.init.normal_(blk.mlp.c_fc.weight, std=fc_std)
                blk.mlp.c_fc.bias.zero_()
                nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std)
                blk.mlp.c_proj.bias.zero_()
                for ln in (blk.ln_1, blk.ln_2):
                    ln.weight.fill_(1.0)
                    ln.bias.zero_()
        nn.init.normal_(self.text_projection, std=cfg.transformer_width**-0.5)
        v = self.visual
        scale = cfg.vision_width**-0.5
        nn.init.normal_(v.conv1.weight, std=(3 * cfg.vision_patch_size**2) ** -0.5)
        nn.init.normal_(v.class_embedding, std=scale)
        nn.init.normal_(v.positional_embedding, std=scale)
        nn.init.normal_(v.proj, std=scale)
        for ln in (v.ln_pre, v.ln_post, self.ln_final):
            ln.weight.fill_(1.0)
            ln.bias.zero_()

    # -- helpers -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.text_projection.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def tokenizer(self):
        from .tokenizer import get_tokenizer

        return get_tokenizer()

    def tokenize(self, texts: str | Sequence[str], truncate: bool = True) -> torch.Tensor:
        """Token ids (B, context_length) on the model's device."""
        toks = self.tokenizer.tokenize(texts, context_length=self.config.context_length, truncate=truncate)
        return toks.to(self.device)

    def preprocess(self, images: Any) -> torch.Tensor:
        """:func:`preprocess_images` at this model's resolution, device and dtype."""
        return preprocess_images(images, self.config.image_resolution, device=self.device, dtype=self.dtype)

    # -- towers --------------------------------------------------------------
    def encode_text(self, texts: str | Sequence[str] | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, embed_dim) text features from strings or token ids (B, L<=context)."""
        if isinstance(texts, torch.Tensor):
            tokens = texts
            if tokens.dim() == 1:
                tokens = tokens.unsqueeze(0)
            if tokens.dim() != 2 or tokens.is_floating_point():
                raise UserError(f"token ids must be an integer (B, L) tensor, got {tuple(texts.shape)} {texts.dtype}")
        else:
            if not isinstance(texts, str) and len(texts) == 0:
                raise UserError("no texts given")
            tokens = self.tokenize(texts)
        tokens = tokens.to(self.device).long()
        b, n = tokens.shape
        cfg = self.config
        if n > cfg.context_length:
            raise UserError(f"token sequences of length {n} exceed the context length {cfg.context_length}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size):
            raise UserError(f"token ids must lie in [0, {cfg.vocab_size})")
        if self.transformer.causal and tokens.numel():
            # Causal attention: positions after the last end token never influence it, so the padding
            # can be dropped. Same result, and most captions use ~20 of the 77 positions.
            tokens = tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]
            b, n = tokens.shape
        x = self.token_embedding(tokens).to(self.dtype) + self.positional_embedding[:n].to(self.dtype)
        x = self.transformer(x)
        x = self.ln_final(x)
        eot = tokens.argmax(dim=-1)  # the end token has the largest id
        x = x[torch.arange(b, device=x.device), eot] @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image(self, images: Any, normalize: bool = True, preprocess: bool = True) -> torch.Tensor:
        """(B, embed_dim) image features.

        With ``preprocess=True`` (default) ``images`` are anything
        :func:`preprocess_images` takes (float tensors in [-1, 1], uint8 arrays,
        PIL images, paths, lists); with ``preprocess=False`` they must already
        be normalised (B, 3, R, R) tensors.
        """
        x = self.preprocess(images) if preprocess else images.to(self.device, self.dtype)
        x = self.visual(x)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: Any, texts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.encode_image(images)
        txt = self.encode_text(texts)
        logits_per_image = self.logit_scale.exp() * img @ txt.t()
        return logits_per_image, logits_per_image.t()


#: FaRL is CLIP with FaRL weights
FaRL = CLIP


# --------------------------------------------------------------------------
# state-dict checks and our checkpoint format
# --------------------------------------------------------------------------


def _list(names: Sequence[str], limit: int = 12) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise a UserError naming every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_list(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) (file vs model): {_list(shapes, 6)}")
    if problems:
        raise UserError(f"{source} does not match the CLIP layout: " + "; ".join(problems))


def load_state_into(model: CLIP, state: Mapping[str, torch.Tensor], source: str) -> CLIP:
    """Strictly copy ``state`` into ``model`` (float conversion, clear errors)."""
    check_state_dict(model, state, source)
    ref = model.state_dict()
    cast = {k: v.detach().to(dtype=ref[k].dtype) for k, v in state.items()}
    model.load_state_dict(cast, strict=True)
    return model


def save_clip(model: CLIP, path: str | os.PathLike, meta: Mapping[str, Any] | None = None,
              dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` as ``path.safetensors`` + ``path.json`` (kind "clip").

    ``dtype=torch.float16`` halves the file (used for shipped weights); loading
    always returns a float32 model.
    """
    from ..common.checkpoint import save_checkpoint

    config: dict[str, Any] = {"kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION}
    config.update(model.config.to_dict())
    if meta:
        config["meta"] = dict(meta)
    tensors = {k: v.to(dtype) for k, v in model.state_dict().items()}
    return save_checkpoint(path, tensors, config)


def load_clip(path: str | os.PathLike, device: torch.device | str = "cpu") -> CLIP:
    """Read a checkpoint written by :func:`save_clip`; the model is in eval mode."""
    from ..common.checkpoint import load_checkpoint

    tensors, config = load_checkpoint(path, expect_kind=CHECKPOINT_KIND)
    version = config.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise UserError(f"CLIP checkpoint {path} has format version {version}; this build reads {FORMAT_VERSION}")
    cfg = CLIPConfig.from_dict(config)
    with torch.device("meta"):
        skeleton = CLIP(cfg)
    model = skeleton.to_empty(device="cpu")
    load_state_into(model, tensors, f"CLIP checkpoint {path}")
    return model.to(device).eval()
