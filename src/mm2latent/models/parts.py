"""The parts of a pipeline folder, and what a missing one says.

A pipeline folder (a weights directory, shipped or written by ``mm2latent
assemble``) may lack parts. A missing part is a :class:`MissingPart`
placeholder: the pipeline starts, and the first use of the part (any attribute
or call) raises :class:`MissingPartError`, one line naming the part, its file
and how to get one (:data:`PART_HINTS`).
"""

from __future__ import annotations

from typing import Any

from ..common.errors import UserError

#: part name -> (what it is, how to get one)
PART_HINTS: dict[str, tuple[str, str]] = {
    "generator": ("StyleGAN2 generator", "convert one with 'mm2latent convert' or assemble one with --generator"),
    "encoder": ("text/image encoder", "train one with 'mm2latent train clip' or assemble one with --text-encoder "
                "(a FaRL checkpoint)"),
    "parser": ("face parser", "train one with 'mm2latent train parser' or assemble one with --parser "
               "(e.g. a BiSeNet .pth)"),
    "analyzer": ("attribute/coefficient analyzer", "train one with 'mm2latent train analyzer' or assemble one "
                 "with --analyzer"),
    "mask_ae": ("mask autoencoder", "train one with 'mm2latent train mask-ae' or assemble one with --mask-ae"),
    "sketch_ae": ("sketch autoencoder", "train one with 'mm2latent train sketch-ae' or assemble one with "
                  "--sketch-ae"),
    "coeff_ae": ("coefficient autoencoder", "train one with 'mm2latent train coeff-ae' or assemble one with "
                 "--coeff-ae"),
    "mapping_net": ("MappingNet", "train one with 'mm2latent train mapping ...' or assemble one with --mapping-net"),
    "inverter": ("image inverter (wplus_inverter, e4e_encoder or image_encoder)",
                 "train one with 'mm2latent train inverter' or assemble an e4e/pSp encoder with --encoder"),
}


class MissingPartError(UserError, AttributeError):
    """A pipeline part that the folder does not hold was used (also an AttributeError, so that
    ``hasattr`` / ``getattr(x, name, default)`` on a missing part answer quietly)."""


def missing_part_message(name: str) -> str:
    what, how = PART_HINTS.get(name, (name, f"add {name}.safetensors to the folder"))
    files = "wplus_inverter / e4e_encoder / image_encoder .safetensors" if name == "inverter" else f"{name}.safetensors"
    return f"this pipeline has no {what} ({files}): {how}"


class MissingPart:
    """Stands in for a part a pipeline folder lacks; every use raises :class:`MissingPartError`."""

    __slots__ = ("part_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "part_name", name)

    def __getattr__(self, attr: str) -> Any:
        raise MissingPartError(missing_part_message(self.part_name))

    def __call__(self, *args, **kwargs) -> Any:
        raise MissingPartError(missing_part_message(self.part_name))

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"MissingPart({self.part_name!r})"


def is_missing(part: Any) -> bool:
    return part is None or isinstance(part, MissingPart)
