"""Controls and their embeddings: the common vocabulary of MappingNet.

Training data and inference go through the same functions, so that a mask
drawn by a user and a mask the parser reads off a generated face reach
MappingNet the same way:

* ``derive(images)``: what the perception stack reads off images (parser mask,
  edge sketch, normalised coefficients, attribute probabilities, image
  embedding) -- used on generator samples to build MappingNet's training set;
* ``embed_*``: a control -> its embedding (mask/sketch/coefficient autoencoder
  encoders, the text tower of the FaRL-style encoder);
* ``resize_labels`` / ``resize_images`` / ``resize_sketch``: the resizing every
  model input goes through.

The weights of a :class:`ControlEncoders` load with
:func:`mm2latent.models.registry.load_components` (``need=("controls",)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .clip import CLIP
from ..world.sketch import extract_sketch


def resize_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W) integer label maps -> (B, size, size), nearest neighbour."""
    if labels.shape[-1] == size and labels.shape[-2] == size:
        return labels.long()
    return F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_sketch(sketch: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) 0/1 edge maps -> (B, 1, size, size); thin lines survive downsizing (area + low threshold)."""
    if sketch.shape[-1] == size:
        return sketch
    down = sketch.shape[-1] > size
    y = F.interpolate(sketch.float(), size=(size, size), mode="area" if down else "nearest")
    return (y > (0.2 if down else 0.5)).float()


@dataclass
class ControlEncoders:
    encoder: CLIP
    parser: torch.nn.Module
    analyzer: torch.nn.Module
    mask_ae: torch.nn.Module
    sketch_ae: torch.nn.Module
    coeff_ae: torch.nn.Module

    def __post_init__(self):
        for m in (self.encoder, self.parser, self.analyzer, self.mask_ae, self.sketch_ae, self.coeff_ae):
            m.eval().requires_grad_(False)

    @property
    def mask_size(self) -> int:
        return self.mask_ae.config.size

    @property
    def sketch_size(self) -> int:
        return self.sketch_ae.config.size

    # ------------------------------------------------------------------ reading controls off images

    @torch.no_grad()
    def attribute_probs(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> the analyzer's attribute probabilities (B, A) alone."""
        return torch.sigmoid(self.analyzer(resize_images(images.float(), self.analyzer.config.size))[0])

    @torch.no_grad()
    def parse_mask(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> the parser's label map (B, M, M) at the mask autoencoder's size."""
        return resize_labels(self.parser(resize_images(images.float(), self.parser.config.size)).argmax(1), self.mask_size)

    @torch.no_grad()
    def derive(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, S, S) in [-1, 1] -> mask (B, M, M) long, sketch (B, 1, K, K), coeffs (B, 13) in
        normalised units, attributes (B, A) probabilities, image_emb (B, D) unit vectors."""
        x = images.float()
        attrs, coeffs = self.analyzer(resize_images(x, self.analyzer.config.size))
        return {
            "mask": self.parse_mask(x),
            "sketch": extract_sketch(resize_images(x, self.sketch_size)),
            "coeffs": coeffs.clamp(-1, 1),
            "attributes": torch.sigmoid(attrs),
            "image_emb": self.encoder.encode_image(x),
        }

    # ------------------------------------------------------------------ embeddings

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        return self.encoder.encode_text(list(texts)).float()

    @torch.no_grad()
    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_image(images.float()).float()

    @torch.no_grad()
    def embed_mask(self, labels: torch.Tensor) -> torch.Tensor:
        return self.mask_ae.encode(resize_labels(labels, self.mask_size))

    @torch.no_grad()
    def embed_sketch(self, sketch: torch.Tensor) -> torch.Tensor:
        return self.sketch_ae.encode(resize_sketch(sketch, self.sketch_size))

    @torch.no_grad()
    def embed_coeffs(self, coeffs: torch.Tensor) -> torch.Tensor:
        return self.coeff_ae.encode(coeffs.float())
