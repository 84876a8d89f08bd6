"""Parameters of one Face World sample: attributes, coefficients, appearance.

A sample is drawn from a fixed number of uniforms in a fixed order, so the
same ``(seed, index)`` gives the same face everywhere, and flipping one
attribute with :func:`set_attribute` changes only what that attribute draws:
every other random choice (colours, light, hair length...) stays put.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..common.errors import UserError
from ..common.seeding import numpy_rng
from .attributes import ATTRIBUTES, HAIR_COLOURS, HAIR_TEXTURES

#: Pose, expression and shape coefficients (the world's 3DMM stand-in).
#: Angles in degrees, the rest in [0, 1] (0.5 = average shape).
COEFF_NAMES: tuple[str, ...] = (
    "yaw", "pitch", "roll",
    "smile", "mouth_open", "eye_open", "brow_raise",
    "face_width", "face_length", "jaw_width", "eye_size", "nose_size", "lip_thickness",
)
COEFF_RANGES: dict[str, tuple[float, float]] = {
    "yaw": (-30.0, 30.0), "pitch": (-15.0, 15.0), "roll": (-15.0, 15.0),
    **{k: (0.0, 1.0) for k in COEFF_NAMES[3:]},
}
POSE_NAMES = COEFF_NAMES[:3]
EXPRESSION_NAMES = COEFF_NAMES[3:7]
SHAPE_NAMES = COEFF_NAMES[7:]

N_ATTR_UNIFORMS = 48
N_APPEARANCE_UNIFORMS = 64


@dataclass
class FaceParams:
    """Everything the renderer needs for one face.

    ``attrs`` are the CelebA booleans; ``coeffs`` the continuous controls;
    ``u`` appearance uniforms (colours, light, hair volume...);
    ``noise_seed`` keys the texture noise.
    """

    attrs: dict[str, bool]
    coeffs: dict[str, float]
    u: np.ndarray = field(repr=False)
    noise_seed: int = 0

    def copy(self) -> "FaceParams":
        return dataclasses.replace(self, attrs=dict(self.attrs), coeffs=dict(self.coeffs), u=self.u.copy())

    def coeff_vector(self) -> np.ndarray:
        return np.array([self.coeffs[k] for k in COEFF_NAMES], dtype=np.float32)

    def attr_vector(self) -> np.ndarray:
        return np.array([self.attrs[a] for a in ATTRIBUTES], dtype=np.float32)


def _sample_attrs(a: np.ndarray) -> dict[str, bool]:
    """Correlated attribute prior (like real faces), from uniforms ``a``."""
    at: dict[str, bool] = {}
    male = at["Male"] = bool(a[0] < 0.45)
    young = at["Young"] = bool(a[1] < 0.72)
    at["Smiling"] = bool(a[2] < 0.48)
    at["Mouth_Slightly_Open"] = bool(a[3] < (0.6 if at["Smiling"] else 0.22))
    at["Eyeglasses"] = bool(a[4] < (0.09 if young else 0.22))
    at["Wearing_Hat"] = bool(a[5] < 0.08)
    at["Bald"] = bool(male and a[6] < (0.08 if young else 0.32))
    at["Receding_Hairline"] = bool(not at["Bald"] and a[7] < (0.24 if male else 0.07))
    for c in HAIR_COLOURS:
        at[c] = False
    if not at["Bald"]:
        if a[8] < (0.04 if young else 0.55):
            at["Gray_Hair"] = True
        else:
            r = a[9]
            blond = 0.34 if not male else 0.12
            if r < blond:
                at["Blond_Hair"] = True
            elif r < blond + (1 - blond) * 0.52:
                at["Black_Hair"] = True
            else:
                at["Brown_Hair"] = True
    at["Wavy_Hair"] = bool(not at["Bald"] and a[10] < (0.45 if not male else 0.2))
    at["Straight_Hair"] = bool(not at["Bald"] and not at["Wavy_Hair"] and a[11] < 0.6)
    at["Bangs"] = bool(not at["Bald"] and not at["Receding_Hairline"] and a[12] < (0.26 if not male else 0.1))
    at["Mustache"] = bool(male and a[13] < 0.26)
    at["Goatee"] = bool(male and a[14] < (0.45 if at["Mustache"] else 0.12))
    at["Sideburns"] = bool(male and not at["Bald"] and a[15] < 0.2)
    at["5_o_Clock_Shadow"] = bool(male and not at["Goatee"] and a[16] < 0.3)
    at["No_Beard"] = not (at["Mustache"] or at["Goatee"])
    at["Heavy_Makeup"] = bool(a[17] < (0.4 if not male else 0.02))
    at["Wearing_Lipstick"] = bool(a[18] < ((0.92 if at["Heavy_Makeup"] else 0.35) if not male else 0.01))
    at["Wearing_Earrings"] = bool(a[19] < (0.4 if not male else 0.07))
    at["Wearing_Necklace"] = bool(a[20] < (0.26 if not male else 0.06))
    at["Wearing_Necktie"] = bool(a[21] < (0.22 if male else 0.03))
    at["Pale_Skin"] = bool(a[22] < 0.08)
    at["Rosy_Cheeks"] = bool(a[23] < ((0.35 if at["Heavy_Makeup"] else 0.1) if not male else 0.05))
    at["Bushy_Eyebrows"] = bool(a[24] < (0.26 if male else 0.08))
    at["Arched_Eyebrows"] = bool(a[25] < (0.45 if not male else 0.1))
    at["Big_Nose"] = bool(a[26] < (0.34 if male else 0.12))
    at["Pointy_Nose"] = bool(not at["Big_Nose"] and a[27] < 0.28)
    at["Narrow_Eyes"] = bool(a[28] < 0.12)
    at["Chubby"] = bool(a[29] < (0.07 if young else 0.2))
    at["Double_Chin"] = bool(a[30] < (0.6 if at["Chubby"] else 0.04))
    at["Big_Lips"] = bool(a[31] < 0.22)
    at["Bags_Under_Eyes"] = bool(a[32] < (0.1 if young else 0.4))
    at["Blurry"] = bool(a[33] < 0.06)
    return {k: at[k] for k in ATTRIBUTES}


def derive_coeffs(attrs: dict[str, bool], c: np.ndarray) -> dict[str, float]:
    """Coefficients consistent with the attributes, from uniforms ``c``."""
    co: dict[str, float] = {}
    co["yaw"] = float((c[0] * 2 - 1) * 30.0 * (0.35 + 0.65 * c[1]))
    co["pitch"] = float((c[2] * 2 - 1) * 15.0 * (0.4 + 0.6 * c[3]))
    co["roll"] = float((c[4] * 2 - 1) * 15.0 * (0.3 + 0.7 * c[5]))
    co["smile"] = float(0.6 + 0.4 * c[6] if attrs["Smiling"] else 0.3 * c[6])
    co["mouth_open"] = float(0.45 + 0.55 * c[7] if attrs["Mouth_Slightly_Open"] else 0.12 * c[7])
    co["eye_open"] = float(0.2 + 0.25 * c[8] if attrs["Narrow_Eyes"] else 0.55 + 0.45 * c[8])
    co["brow_raise"] = float(c[9])
    co["face_width"] = float(0.7 + 0.3 * c[10] if attrs["Chubby"] else 0.55 * c[10] + (0.1 if attrs["Male"] else 0.0))
    co["face_length"] = float(c[11])
    co["jaw_width"] = float(min(1.0, c[12] * 0.7 + (0.3 if attrs["Male"] else 0.0)))
    co["eye_size"] = float(c[13])
    co["nose_size"] = float(0.65 + 0.35 * c[14] if attrs["Big_Nose"] else 0.5 * c[14])
    co["lip_thickness"] = float(0.65 + 0.35 * c[15] if attrs["Big_Lips"] else 0.5 * c[15])
    return co


def sample_params(seed: int, index: int) -> FaceParams:
    """Sample ``index`` of world ``seed``: deterministic on every machine."""
    rng = numpy_rng(seed, index)
    a = rng.random(N_ATTR_UNIFORMS)
    c = rng.random(16)
    u = rng.random(N_APPEARANCE_UNIFORMS)
    noise_seed = int(rng.integers(0, 2**31 - 1))
    attrs = _sample_attrs(a)
    p = FaceParams(attrs=attrs, coeffs=derive_coeffs(attrs, c), u=np.concatenate([u, c]), noise_seed=noise_seed)
    return p


def _coeff_uniforms(p: FaceParams) -> np.ndarray:
    return p.u[N_APPEARANCE_UNIFORMS:]


def set_attribute(p: FaceParams, name: str, value: bool) -> FaceParams:
    """Return a copy of ``p`` with one attribute set, keeping the rest consistent.

    Exclusive groups (hair colour, hair texture) switch the others off;
    ``Bald`` clears hair attributes; beard attributes keep ``No_Beard`` true
    to its definition. Expression/shape coefficients tied to the attribute are
    re-derived from the same uniforms, so nothing else moves.
    """
    if name not in ATTRIBUTES:
        raise UserError(f"unknown attribute {name!r}")
    q = p.copy()
    at = q.attrs
    value = bool(value)
    at[name] = value
    if name in HAIR_COLOURS and value:
        for c in HAIR_COLOURS:
            at[c] = c == name
        at["Bald"] = False
    if name in HAIR_TEXTURES and value:
        for t in HAIR_TEXTURES:
            at[t] = t == name
        at["Bald"] = False
    if name == "Bald" and value:
        for c in HAIR_COLOURS + HAIR_TEXTURES + ("Bangs", "Receding_Hairline", "Sideburns"):
            at[c] = False
    if name == "Big_Nose" and value:
        at["Pointy_Nose"] = False
    if name == "Pointy_Nose" and value:
        at["Big_Nose"] = False
    if name in ("Bangs", "Receding_Hairline", "Sideburns") and value:
        at["Bald"] = False
        if name == "Bangs":
            at["Receding_Hairline"] = False
        if name == "Receding_Hairline":
            at["Bangs"] = False
    if at["Bald"] is False and not any(at[c] for c in HAIR_COLOURS):
        at["Brown_Hair"] = True
    if name == "No_Beard":
        if value:
            at["Mustache"] = at["Goatee"] = False
        elif not (at["Mustache"] or at["Goatee"]):
            at["Goatee"] = True
    at["No_Beard"] = not (at["Mustache"] or at["Goatee"])
    q.coeffs = derive_coeffs(at, _coeff_uniforms(q)) | {k: q.coeffs[k] for k in POSE_NAMES}
    return q


def set_coeffs(p: FaceParams, **coeffs: float) -> FaceParams:
    """Return a copy of ``p`` with coefficients overridden (clipped to their ranges).

    Attributes that are defined by a coefficient follow it (``smile`` >= 0.5
    means Smiling, ``mouth_open`` >= 0.3 Mouth_Slightly_Open, ``eye_open`` < 0.5
    Narrow_Eyes, ``nose_size`` >= 0.6 Big_Nose, ``lip_thickness`` >= 0.6
    Big_Lips, ``face_width`` >= 0.68 Chubby), so labels stay true to the render.
    """
    q = p.copy()
    for k, v in coeffs.items():
        if k not in COEFF_RANGES:
            raise UserError(f"unknown coefficient {k!r}; known: {', '.join(COEFF_NAMES)}")
        v = float(v)
        if not np.isfinite(v):
            raise UserError(f"coefficient {k} must be a finite number, got {v}")
        lo, hi = COEFF_RANGES[k]
        q.coeffs[k] = float(min(max(v, lo), hi))
    q.attrs["Smiling"] = q.coeffs["smile"] >= 0.5
    q.attrs["Mouth_Slightly_Open"] = q.coeffs["mouth_open"] >= 0.3
    q.attrs["Narrow_Eyes"] = q.coeffs["eye_open"] < 0.5
    q.attrs["Big_Nose"] = q.coeffs["nose_size"] >= 0.6
    q.attrs["Big_Lips"] = q.coeffs["lip_thickness"] >= 0.6
    q.attrs["Chubby"] = q.coeffs["face_width"] >= 0.68
    if q.attrs["Big_Nose"]:
        q.attrs["Pointy_Nose"] = False
    return q
