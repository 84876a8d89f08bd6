"""The Face World renderer: parameters -> (RGB image, exact 19-class label map).

Faces are drawn in painter's order (background, hair behind the head, neck,
clothes, ears, face, features, hair in front, hat, jewellery). Every layer
writes its label and its colour to the same pixels, so the label map is exact
for the image by construction. Geometry lives in a head frame (rotated by
roll; features shifted by yaw and pitch according to their depth), so the
pose coefficients are obeyed. Colour comes from base tones, a sphere shading
model with a random light, strand/fold/skin textures, noise and blur.

Coordinates are fractions of the frame, so any resolution renders the same
face; 128 is the default, 64 and 256 are supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ..common.errors import UserError
from ..common.palette import CLASS_INDEX as C
from ..common.seeding import numpy_rng
from .params import FaceParams

SUPPORTED_SIZES = (64, 128, 256)

_SKIN_TONES = np.array([(242, 208, 184), (222, 178, 145), (196, 146, 108), (160, 112, 78), (112, 74, 52)], np.float32)
_PALE = np.array((246, 226, 212), np.float32)
_HAIR = {
    "Black_Hair": np.array((28, 24, 24), np.float32),
    "Brown_Hair": np.array((98, 62, 36), np.float32),
    "Blond_Hair": np.array((222, 186, 118), np.float32),
    "Gray_Hair": np.array((172, 170, 168), np.float32),
}
_IRIS = np.array([(70, 45, 25), (40, 30, 25), (70, 110, 150), (80, 110, 70)], np.float32)


@dataclass
class Render:
    """One rendered sample: image (H, W, 3) uint8 and label map (H, W) uint8."""

    image: np.ndarray
    mask: np.ndarray


def _lerp(a, b, t):
    return a + (b - a) * t


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0,1] -> RGB float in [0,255] (for picking clothes/background colours)."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array((r, g, b), np.float32) * 255


class _Canvas:
    """Image + label buffers with the painter's-order ``paint`` operation."""

    def __init__(self, size: int):
        self.size = size
        self.img = np.zeros((size, size, 3), np.float32)
        self.lab = np.zeros((size, size), np.uint8)

    def paint(self, region: np.ndarray, label: int | None, colour: np.ndarray) -> None:
        """Write ``label`` and ``colour`` (an (H, W, 3) field or an RGB triple) on ``region``."""
        if label is not None:
            self.lab[region] = label
        self.img[region] = colour[region] if colour.ndim == 3 else colour

    def tint(self, region_weight: np.ndarray, colour: np.ndarray, allowed: np.ndarray | None = None) -> None:
        """Blend ``colour`` into the image with a soft weight (image only: labels unchanged)."""
        w = region_weight if allowed is None else region_weight * allowed
        self.img = self.img * (1 - w[..., None]) + colour * w[..., None]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise in about [-1, 1]: a random grid upsampled bicubically."""
    g = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    big = np.asarray(Image.fromarray(g, "F").resize((size + 3 * size // cells, size + 3 * size // cells), Image.BICUBIC))
    o = size // (2 * cells)
    return big[o:o + size, o:o + size] / 1.2


def drawable_size(size: int) -> int:
    """``size`` if the renderer draws it, else the smallest larger size it draws (the largest if none)."""
    if size in SUPPORTED_SIZES:
        return size
    return min([s for s in SUPPORTED_SIZES if s >= size] or [max(SUPPORTED_SIZES)])


def _ellipse(U, V, cu, cv, ru, rv):
    return ((U - cu) / ru) ** 2 + ((V - cv) / rv) ** 2


def render(p: FaceParams, size: int = 128) -> Render:
    """Draw the face described by ``p`` at ``size`` x ``size``."""
    if size not in SUPPORTED_SIZES:
        raise UserError(f"unsupported size {size}; choose one of {', '.join(map(str, SUPPORTED_SIZES))}")
    at, co, u = p.attrs, p.coeffs, p.u
    S = size
    nrng = numpy_rng(p.noise_seed, 7)
    n_lo = _smooth_noise(nrng, S, 4)
    n_mid = _smooth_noise(nrng, S, 12)
    n_hi = _smooth_noise(nrng, S, 40)
    white = nrng.standard_normal((S, S, 3)).astype(np.float32)

    px = (np.arange(S, dtype=np.float32) + 0.5) / S
    X, Y = np.meshgrid(px, px)
    male = at["Male"]

    # ---------------------------------------------------------------- geometry
    s = 0.97 + 0.08 * u[26]
    cx = 0.5 + (u[24] - 0.5) * 0.05
    cy = 0.56 + (u[25] - 0.5) * 0.04
    yaw, pitch, roll = np.deg2rad(co["yaw"]), np.deg2rad(co["pitch"]), np.deg2rad(co["roll"])
    sy, cyw, sp = np.sin(yaw), np.cos(yaw), np.sin(pitch)
    dx, dy = X - cx, Y - cy
    cr, sr = np.cos(roll), np.sin(roll)
    U = cr * dx + sr * dy
    V = -sr * dx + cr * dy

    af = s * (0.232 + 0.05 * co["face_width"]) * (1 - 0.06 * abs(sy))
    bf = s * (0.335 + 0.035 * co["face_length"])

    def proj(x: float, y: float, z: float) -> tuple[float, float]:
        """Screen (head-frame) position of a face point at depth ``z`` (units of af)."""
        return x * cyw + z * af * sy, y * np.cos(pitch) - z * af * sp * 0.8

    fcu = 0.22 * af * sy  # the face oval follows the turn a little
    v = V / bf
    taper = 0.42 - 0.22 * co["jaw_width"] - (0.1 if at["Chubby"] else 0.0)
    aw = af * (1 - taper * np.clip(v, 0, 1) ** 2)
    face = ((U - fcu) / aw) ** 2 + v ** 2 < 1.0

    # head sphere shading with a random light
    az, el = (u[9] - 0.5) * 2.2, 0.35 + 0.5 * u[10]
    L = np.array([np.sin(az) * np.cos(el), -np.sin(el) * 0.6, np.cos(az) * np.cos(el)], np.float32)
    L /= np.linalg.norm(L)
    nx = (U - fcu) / (af * 1.25)
    ny = (V + 0.1 * bf) / (bf * 1.3)
    nz = np.sqrt(np.clip(1 - nx ** 2 - ny ** 2, 0.02, 1))
    amb = 0.5 + 0.15 * u[11]
    shade = amb + (1 - amb) * np.clip(nx * L[0] + ny * L[1] + nz * L[2], 0, 1)
    light_tint = _lerp(np.array((1.04, 1.0, 0.93), np.float32), np.array((0.95, 1.0, 1.06), np.float32), u[41])

    # ---------------------------------------------------------------- colours
    tone = _lerp(_SKIN_TONES[int(u[0] * 4.999)], _SKIN_TONES[min(4, int(u[0] * 4.999) + 1)], u[1] * 0.5)
    skin_rgb = _PALE * (0.97 + 0.03 * u[2]) if at["Pale_Skin"] else tone * (0.95 + 0.08 * u[2])
    hair_key = next((k for k in _HAIR if at[k]), None)
    hair_rgb = _HAIR.get(hair_key, _HAIR["Brown_Hair"]) * (0.85 + 0.3 * u[3])

    def field(rgb: np.ndarray, shading: np.ndarray | float = 1.0, tex: np.ndarray | float = 0.0) -> np.ndarray:
        sh = shading if np.ndim(shading) == 0 else shading[..., None]
        tx = tex if np.ndim(tex) == 0 else tex[..., None]
        out = np.clip(rgb[None, None, :] * sh * (1 + tx) * light_tint, 0, 255)
        return np.broadcast_to(out, (S, S, 3))

    skin_tex = 0.035 * n_mid + 0.03 * n_hi
    skin_field = field(skin_rgb, shade, skin_tex)

    cv = _Canvas(S)

    # 1. background: two-tone gradient with blotches
    bg1 = _hsv(u[12], 0.15 + 0.35 * u[13], 0.35 + 0.55 * u[14])
    bg2 = _hsv((u[12] + 0.08) % 1, 0.1 + 0.3 * u[13], 0.25 + 0.6 * (1 - u[14]))
    gdir = u[42] * 2 * np.pi
    g = np.clip(0.5 + (np.cos(gdir) * (X - 0.5) + np.sin(gdir) * (Y - 0.5)) * 1.2 + 0.25 * n_lo, 0, 1)
    cv.img[:] = (bg1[None, None] * (1 - g[..., None]) + bg2[None, None] * g[..., None]) * (1 + 0.04 * n_mid[..., None])

    # 2. hair behind the head
    vol = u[5]
    long_hair = (u[4] < 0.82) if not male else (u[4] < 0.07)
    wavy = at["Wavy_Hair"]
    has_hair = not at["Bald"]
    theta = np.arctan2(U - fcu, -(V + 0.1 * bf))
    wave = (0.045 * np.sin(theta * 9 + u[6] * 6.28) if wavy else 0.012 * np.sin(theta * 5 + u[6] * 6.28))
    cap_cv = -0.2 * bf
    cap_ru = af * (1.2 + 0.22 * vol + (0.06 if wavy else 0.0))
    cap_rv = bf * (1.16 + 0.28 * vol)
    cap = _ellipse(U, V, fcu, cap_cv, cap_ru, cap_rv) < (1 + wave) ** 2
    if long_hair:
        hair_bottom = bf * (0.75 + 0.5 * u[43])
        side = np.abs(U - fcu) < cap_ru * (1.0 + 0.3 * np.clip(V / bf, 0, 1.5)) + (0.02 * np.sin(V * 60 + u[6] * 6) if wavy else 0)
        longr = side & (V > cap_cv) & (V < hair_bottom + (0.02 * np.sin(U * 50) if wavy else 0.0))
        back_hair = cap | longr
    else:
        back_hair = cap & (V < bf * (0.12 + 0.1 * vol))
    straight = at["Straight_Hair"]
    rad = np.hypot(U - fcu, V + bf)
    if wavy:  # big waves
        strand_t = theta * 45 + 2.5 * n_mid + np.sin(rad * 90) * 1.6
    elif straight:  # sleek parallel strands
        strand_t = theta * 80 + 0.8 * n_mid
    else:  # neither: short frizzy curls
        strand_t = theta * 60 + 4.0 * n_mid + 2.5 * np.sin(rad * 260 + 3 * n_hi)
    hair_shade = 0.55 + 0.45 * np.clip(0.6 * nz + 0.4 * shade, 0, 1)
    if straight:  # a sheen band across straight hair
        hair_shade = hair_shade * (1 + 0.22 * np.exp(-((V + bf * 0.75) / (bf * 0.12)) ** 2))
    hair_field = field(hair_rgb, hair_shade * (0.86 + 0.14 * np.sin(strand_t)), 0.08 * n_hi)
    hair_back_field = field(hair_rgb, 0.72 * (0.86 + 0.14 * np.sin(strand_t)), 0.08 * n_hi)
    if has_hair:
        cv.paint(back_hair, C["hair"], hair_back_field)

    # 3. neck, with a shadow under the chin
    body_roll = roll * 0.3
    bdx = np.cos(body_roll) * dx + np.sin(body_roll) * dy
    nw = s * (0.125 + 0.04 * u[29] + (0.015 if male else 0.0))
    neck = (np.abs(bdx - 0.3 * fcu) < nw * (1 + 1.5 * np.clip((Y - cy - bf) / 0.2, 0, 1))) & (V > 0.2 * bf)
    chin_y = cy + bf
    neck_shadow = 0.6 + 0.35 * np.clip((Y - chin_y) / 0.06, 0, 1)
    cv.paint(neck, C["neck"], field(skin_rgb * 0.96, neck_shadow * (0.8 + 0.2 * shade), skin_tex))

    # 4. clothes: shoulders below a sloping line, neckline opening, optional tie
    sy0 = chin_y + s * (-0.035 + 0.08 * u[27])
    sh_line = sy0 + 0.5 * np.clip(np.abs(bdx) - nw * 1.2, 0, None) ** 1.6 - 0.02 * np.clip(np.abs(bdx) - nw * 1.2, 0, 0.1)
    body = Y > sh_line
    depth = s * (0.08 + 0.1 * u[28])
    if at["Wearing_Necktie"]:
        opening = (np.abs(bdx) < nw * 0.55 * (1 - (Y - sy0) / (depth * 0.5))) & (Y > sy0)
    elif u[28] < 0.5:
        opening = (np.abs(bdx) < nw * 1.3 * (1 - (Y - sy0) / depth)) & (Y > sy0)
    else:
        opening = ((bdx / (nw * 1.35)) ** 2 + ((Y - sy0) / depth) ** 2 < 1) & (Y > sy0)
    cloth = body & ~opening
    cloth_rgb = _hsv(u[15], 0.2 + 0.6 * u[16], 0.2 + 0.7 * u[44])
    folds = 0.12 * n_mid + 0.06 * np.sin(bdx * 40 + 3 * n_lo)
    if at["Wearing_Necktie"]:
        cloth_rgb = np.array((236, 236, 230), np.float32) * (0.9 + 0.1 * u[16]) if u[44] < 0.6 else cloth_rgb
    cv.paint(cloth, C["cloth"], field(cloth_rgb, 0.75 + 0.25 * np.clip(1 - (Y - sy0) * 3, 0, 1), folds))
    if at["Wearing_Necktie"]:
        ty = (Y - sy0) / 0.12
        tie = (np.abs(bdx) < s * (0.011 + 0.02 * np.clip(ty, 0, 1))) & (Y > sy0 - s * 0.012) & body
        knot = _ellipse(bdx, Y, 0, sy0 + s * 0.004, s * 0.016, s * 0.014) < 1
        tie_rgb = _hsv(u[17], 0.75, 0.35 + 0.4 * u[45])
        stripes = 0.15 * np.sin((bdx + Y) * 260)
        cv.paint((tie | knot) & (Y < 1.0), C["cloth"], field(tie_rgb, 0.9, stripes))
        collar = body & ~tie & ~knot & (np.abs(bdx) < nw * 1.5) & (Y < sy0 + s * 0.04) & (Y > sh_line)
        cv.paint(collar, C["cloth"], field(np.array((245, 245, 240), np.float32), 0.95, 0.02 * n_hi))

    # 5. long hair falling over the shoulders
    if has_hair and long_hair:
        over = back_hair & (np.abs(U - fcu) > nw * 1.15) & (V > 0.45 * bf) & (cv.lab != C["neck"])
        cv.paint(over, C["hair"], hair_field)

    # 6. necklace on the neck
    if at["Wearing_Necklace"]:
        nl_y = chin_y + s * (0.03 + 0.025 * u[22]) + s * 0.05 * (bdx / nw) ** 2
        chain = (np.abs(Y - nl_y) < s * 0.0065) & (cv.lab == C["neck"])
        pend = (_ellipse(bdx, Y, 0, chin_y + s * 0.04 + s * 0.025 * u[22] + s * 0.012, s * 0.011, s * 0.014) < 1) & (cv.lab == C["neck"])
        metal = np.array((220, 180, 60), np.float32) if u[22] < 0.5 else np.array((205, 205, 215), np.float32)
        cv.paint(chain | pend, C["neck_l"], field(metal, 0.8 + 0.3 * np.sin(X * 300), 0.0))

    # 7. ears (behind the face; the far one slides behind it)
    ey = -0.09 * s * (1 + 0.1 * (co["face_length"] - 0.5))
    for side_sign, label in ((+1, C["l_ear"]), (-1, C["r_ear"])):
        eu, ev = proj(side_sign * af * 0.97, ey + s * 0.05, -0.35)
        ear = _ellipse(U, V, eu, ev, s * 0.028 * (0.85 + 0.35 * u[35]), s * 0.06) < 1
        inner = _ellipse(U, V, eu, ev, s * 0.014, s * 0.038) < 1
        cv.paint(ear, label, field(skin_rgb, 0.85 * shade + 0.1 - 0.12 * inner, skin_tex))

    # 8. bald head: the skull is skin
    if at["Bald"] or at["Receding_Hairline"]:
        dome = (_ellipse(U, V, fcu, -0.1 * bf, af * 1.02, bf * 1.1) < 1) & (V < 0)
        cv.paint(dome, C["skin"], field(skin_rgb, shade * 1.05, skin_tex))

    # 9. face oval (and a double chin)
    cv.paint(face, C["skin"], skin_field)
    if at["Double_Chin"]:
        dc = (_ellipse(U, V, fcu, bf * 1.0, af * 0.45, bf * 0.12) < 1) & (V > bf * 0.8)
        cv.paint(dc, C["skin"], field(skin_rgb, shade * 0.9, skin_tex))
        crease = (np.abs(_ellipse(U, V, fcu, bf * 0.9, af * 0.42, bf * 0.1) - 1) < 0.25) & (V > bf * 0.9)
        cv.tint(0.6 * crease, skin_rgb * 0.5, cv.lab == C["skin"])
    # jaw shadow for the 3D look
    cv.tint(0.25 * np.clip((v - 0.6) / 0.4, 0, 1) * face, skin_rgb * 0.6)

    # skin details: cheeks, wrinkles, stubble, beard (labels stay "skin")
    is_skin = cv.lab == C["skin"]
    mu_x, mu_y = proj(0.0, bf * 0.57, 0.75)
    if at["Rosy_Cheeks"] or at["Heavy_Makeup"]:
        k = 0.45 if at["Rosy_Cheeks"] else 0.2
        for sg in (+1, -1):
            cu_, cv_ = proj(sg * af * 0.55, bf * 0.22, 0.6)
            blush = np.exp(-_ellipse(U, V, cu_, cv_, af * 0.22, bf * 0.12) * 1.2)
            cv.tint(k * blush, np.array((225, 90, 100), np.float32), is_skin)
    if not at["Young"]:
        for i in range(3):
            fy = -bf * (0.55 - 0.08 * i)
            line = np.exp(-((V - fy - 0.008 * np.sin(U * 40)) / (0.005 * s)) ** 2) * (np.abs(U - fcu) < af * 0.55)
            cv.tint(0.5 * line, skin_rgb * 0.55, is_skin)
        for sg in (+1, -1):
            nl_u, nl_v = proj(sg * af * 0.3, bf * 0.38, 0.8)
            fold = np.exp(-(((U - nl_u) - sg * (V - nl_v) * 0.35) / (0.006 * s)) ** 2) * (np.abs(V - nl_v) < bf * 0.16)
            cv.tint(0.5 * fold, skin_rgb * 0.5, is_skin)
    beard_rgb = hair_rgb * 0.7 if hair_key not in (None, "Blond_Hair") else np.array((60, 45, 35), np.float32)
    lower_face = is_skin & (V > bf * 0.3)
    if at["5_o_Clock_Shadow"]:
        stubble = np.clip(0.45 + 0.3 * n_hi + 0.15 * white[..., 0], 0, 1) * np.clip((V - bf * 0.3) / (bf * 0.15), 0, 1)
        cv.tint(0.55 * stubble, beard_rgb * 0.8 + 20, lower_face)
    if at["Mustache"]:
        mu_top = mu_y - s * 0.045
        must = (np.abs(U - mu_x) < s * (0.07 + 0.01 * co["smile"])) & (V > mu_top + 0.25 * np.abs(U - mu_x)) & (V < mu_y - s * 0.012)
        cv.tint(0.9 * must, beard_rgb * (0.9 + 0.2 * n_hi[..., None]), is_skin)
    if at["Goatee"]:
        gt = _ellipse(U, V, mu_x, mu_y + s * 0.085, s * 0.05, s * 0.055) < 1
        cv.tint(0.9 * gt, beard_rgb * (0.9 + 0.2 * n_hi[..., None]), is_skin)

    # 10. nose: bridge to tip, widening, with nostrils
    ns = co["nose_size"]
    top_v = proj(0.0, ey + s * 0.015, 0.6)[1]
    bot_v = proj(0.0, s * (0.05 + 0.05 * ns) + (s * 0.018 if at["Pointy_Nose"] else 0), 1.0)[1]
    tnv = np.clip((V - top_v) / (bot_v - top_v), 0, 1)
    z_n = 0.6 + 0.4 * tnv
    ncu = z_n * af * sy
    half_w = s * (0.016 + (0.02 + 0.05 * ns) * tnv ** 1.5) * (0.7 if at["Pointy_Nose"] else 1.0) * (0.8 + 0.2 * cyw)
    nose = (np.abs(U - ncu) < half_w) & (V > top_v) & (V < bot_v)
    nose |= _ellipse(U, V, af * sy, bot_v - s * 0.012, half_w.max() if np.ndim(half_w) else half_w, s * 0.014) < 1
    edge = np.clip(1 - np.abs(U - ncu) / (half_w + 1e-6), 0, 1)
    nose_sh = shade * (0.62 + 0.45 * np.sqrt(edge))
    cv.paint(nose, C["nose"], field(skin_rgb, nose_sh, skin_tex))
    for sg in (+1, -1):
        nost = _ellipse(U, V, af * sy + sg * s * (0.018 + 0.01 * ns), bot_v - s * 0.008, s * 0.009, s * 0.005) < 1
        cv.tint(0.7 * (nost & nose), skin_rgb * 0.35)
    if at["Pointy_Nose"]:
        cv.tint(0.6 * np.exp(-_ellipse(U, V, af * sy, bot_v - s * 0.03, s * 0.008, s * 0.022)) * nose, np.array((255, 248, 240), np.float32))

    # 11. eyebrows
    ex = s * 0.121 * (0.95 + 0.1 * u[36])
    brow_t = s * (0.0175 if at["Bushy_Eyebrows"] else (0.0105 if male else 0.0085)) * (0.9 + 0.2 * u[37])
    brow_rgb = (hair_rgb if hair_key not in (None, "Gray_Hair", "Blond_Hair") else np.array((80, 60, 45), np.float32)) * 0.8
    for sg, label in ((+1, C["l_brow"]), (-1, C["r_brow"])):
        bu, bv = proj(sg * ex * 1.03, ey - s * (0.043 + 0.014 * co["brow_raise"]), 0.6)
        bw = s * 0.056 * (0.55 + 0.45 * cyw)
        t = (U - bu) / bw
        arch = s * (0.019 if at["Arched_Eyebrows"] else 0.005)
        peak = 0.35 * sg
        centre = bv - arch * np.clip(1 - ((t - peak) / 1.2) ** 2, 0, 1) * (1 + 0.6 * (at["Arched_Eyebrows"]) * (np.abs(t - peak) < 0.4))
        thick = brow_t * (1 - 0.45 * np.clip(sg * t * 0.5 + 0.5, 0, 1))
        brow = (np.abs(t) < 1) & (np.abs(V - centre) < thick)
        cv.paint(brow, label, field(brow_rgb, 0.85 + 0.15 * np.sin(U * 500 + V * 200), 0.1 * n_hi))

    # 12. eyeglasses: frames + lenses are "eye_g"
    eye_c = [proj(sg * ex, ey, 0.55) for sg in (+1, -1)]
    if at["Eyeglasses"]:
        gru, grv = s * 0.058 * (1 + 0.12 * u[38]) * (0.7 + 0.3 * cyw), s * 0.044 * (1 + 0.1 * u[38])
        power = 2.0 if u[21] < 0.5 else 4.0
        frame_rgb = np.array((25, 22, 20), np.float32) if u[21] % 0.5 < 0.3 else np.array((150, 110, 60), np.float32)
        glass = np.zeros_like(face)
        rim = np.zeros_like(face)
        for eu, ev in eye_c:
            r = (np.abs((U - eu) / gru) ** power + np.abs((V - ev) / grv) ** power) ** (1 / power)
            glass |= r < 1
            rim |= (r < 1) & (r > 1 - s * 0.009 / grv)
        ru_, lu_ = eye_c[1][0], eye_c[0][0]
        bridge = (U > ru_ + gru * 0.95) & (U < lu_ - gru * 0.95) & (np.abs(V - (ev - grv * 0.35)) < s * 0.005)
        arms = ((np.abs(V - (ev - grv * 0.3)) < s * 0.0045) & (((U > lu_ + gru * 0.95) & (U < fcu + aw * 1.0)) | ((U < ru_ - gru * 0.95) & (U > fcu - aw * 1.0))))
        lens_field = cv.img * 0.85 + np.array((190, 205, 220), np.float32) * 0.15
        cv.paint(glass, C["eye_g"], lens_field)
        cv.paint(rim | bridge | arms, C["eye_g"], field(frame_rgb, 0.9, 0.0))
        glass_inner = glass & ~rim

    # 13. eyes: almond sclera, iris, pupil, highlight
    iris_rgb = _IRIS[int(u[8] * 3.999)]
    for (eu, ev), sg, label in zip(eye_c, (+1, -1), (C["l_eye"], C["r_eye"])):
        rx = s * 0.041 * (0.9 + 0.25 * co["eye_size"]) * (0.6 + 0.4 * cyw)
        ry = s * 0.021 * (0.9 + 0.25 * co["eye_size"]) * co["eye_open"] * (1 - 0.22 * co["smile"])
        tu = (U - eu) / rx
        lidw = np.clip(1 - tu ** 2, 0, 1) ** 0.8
        eye = (np.abs(tu) < 1) & (np.abs(V - ev) < ry * lidw * (1 + 0.1 * sg * tu))
        gaze = 0.3 * rx * sy
        ir = _ellipse(U, V, eu + gaze, ev, ry * 1.15, ry * 1.15) < 1
        pupil = _ellipse(U, V, eu + gaze, ev, ry * 0.5, ry * 0.5) < 1
        hl = _ellipse(U, V, eu + gaze - ry * 0.3, ev - ry * 0.35, ry * 0.28, ry * 0.28) < 1
        col = field(np.array((232, 228, 222), np.float32), 0.85 + 0.15 * shade, 0.02 * n_hi)
        col = np.where(ir[..., None], field(iris_rgb, 1.0, 0.15 * n_hi), col)
        col = np.where(pupil[..., None], np.float32(15), col)
        col = np.where(hl[..., None], np.float32(250), col)
        lid = np.abs(V - ev) > ry * lidw * 0.7
        col = np.where((lid & (V < ev))[..., None], col * 0.55, col)
        cv.paint(eye, label, col)
        if at["Heavy_Makeup"]:
            shadow = (np.abs(tu) < 1.2) & (V < ev) & (V > ev - ry * 2.6 - s * 0.006) & ~eye
            cv.tint(0.5 * shadow, _hsv(u[31], 0.5, 0.45), cv.lab == C["skin"])
            liner = eye & lid & (V < ev)
            cv.tint(0.8 * liner, np.array((10, 10, 10), np.float32))
        if at["Bags_Under_Eyes"]:
            bag = np.exp(-_ellipse(U, V, eu, ev + ry + s * 0.016, rx * 1.0, s * 0.012))
            cv.tint(0.65 * bag, skin_rgb * 0.5 * np.array((1.0, 0.9, 1.05), np.float32), cv.lab == C["skin"])
    if at["Eyeglasses"]:
        cv.tint(0.12 * glass_inner, np.array((200, 215, 235), np.float32))

    # 14. lips and mouth
    sm, mo = co["smile"], co["mouth_open"]
    mw = s * (0.056 + 0.012 * u[36] + 0.016 * sm) * (0.75 + 0.25 * cyw)
    tx = (U - mu_x) / mw
    prof = np.sqrt(np.clip(1 - tx ** 2, 0, 1))
    line = mu_y - sm * s * 0.026 * tx ** 2 + sm * s * 0.008
    gap = s * (0.032 * mo + 0.01 * sm * (mo > 0.3))
    lt = co["lip_thickness"]
    tup = s * (0.0095 + 0.009 * lt) * (1 + 0.25 * np.cos(tx * np.pi * 1.5)) * (1 - 0.3 * sm)
    tlo = s * (0.013 + 0.012 * lt) * (1 - 0.2 * sm)
    inside = np.abs(tx) < 1
    u_lip = inside & (V < line - gap / 2 * prof) & (V > line - gap / 2 * prof - tup * prof)
    l_lip = inside & (V > line + gap / 2 * prof) & (V < line + gap / 2 * prof + tlo * prof)
    mouth = (np.abs(tx) < 0.92) & (np.abs(V - line) <= gap / 2 * prof) & ~u_lip & ~l_lip
    if at["Wearing_Lipstick"]:
        lip_rgb = _hsv(0.97 + 0.05 * u[20] - (u[20] > 0.6), 0.75, 0.55 + 0.3 * u[46])
    else:
        lip_rgb = skin_rgb * np.array((0.92, 0.62, 0.62), np.float32)
    lip_sh = shade * (0.85 + 0.2 * np.clip((line - V) / (s * 0.02), -1, 1) * 0)
    cv.paint(u_lip, C["u_lip"], field(lip_rgb * 0.92, lip_sh, 0.03 * n_hi))
    cv.paint(l_lip, C["l_lip"], field(lip_rgb, lip_sh * (1 + 0.12 * np.clip(1 - np.abs(tx), 0, 1)), 0.03 * n_hi))
    teeth = mouth & (V < line - gap * 0.05) if sm > 0.5 else np.zeros_like(mouth)
    cv.paint(mouth, C["mouth"], field(np.array((90, 30, 35), np.float32), 1.0, 0.05 * n_hi))
    cv.paint(teeth, C["mouth"], field(np.array((238, 234, 222), np.float32), 0.95, 0.02 * n_hi))

    # 15. hair in front: over the forehead, bangs, sideburns
    if has_hair:
        hu = (U - fcu) / af
        if at["Receding_Hairline"]:
            hl = -bf * (1.08 + 0.05 * u[34]) + bf * 0.3 * hu ** 2 - bf * 0.25 * np.exp(-((np.abs(hu) - 0.5) / 0.22) ** 2)
        else:
            hl = -bf * (0.9 + 0.1 * u[34]) + bf * 0.65 * hu ** 2
        front = cap & (V < hl + (0.01 * np.sin(U * 120) if wavy else 0.0))
        if at["Bangs"]:
            jag = s * 0.012 * np.abs(np.sin(U * 70 + u[30] * 6))
            bang_line = ey - s * (0.058 + 0.04 * u[30]) + jag
            front |= cap & (np.abs(hu) < 0.95) & (V < bang_line)
        if at["Sideburns"]:
            sb_w = s * 0.022
            front |= face & (np.abs(U - fcu) > aw - sb_w) & (V > hl - s * 0.05) & (V < ey + s * 0.085)
        cv.paint(front & (cv.lab != C["eye_g"]), C["hair"], hair_field)

    # 16. hat
    if at["Wearing_Hat"]:
        hat_rgb = _hsv(u[18], 0.3 + 0.5 * u[47], 0.25 + 0.6 * u[48])
        brim_v = -bf * (0.6 + 0.08 * u[34])
        crown = (_ellipse(U, V, fcu, brim_v, cap_ru * 0.98, bf * 0.72) < 1) & (V < brim_v)
        if u[19] < 0.5:  # brimmed hat
            brim = (np.abs(V - brim_v) < s * 0.014) & (np.abs(U - fcu) < cap_ru * 1.3)
        else:  # cap with a visor
            brim = (_ellipse(U, V, fcu + 0.2 * af * sy, brim_v, af * 0.8, s * 0.03) < 1) & (V > brim_v - s * 0.01)
        band = (V < brim_v) & (V > brim_v - s * 0.025)
        hat = crown | brim
        cv.paint(hat, C["hat"], field(hat_rgb, (0.6 + 0.4 * shade) * (1 - 0.25 * band), 0.06 * n_mid + 0.04 * n_hi))

    # 17. earrings, where the ear is in view
    if at["Wearing_Earrings"]:
        metal = np.array((225, 190, 80), np.float32) if u[23] < 0.6 else np.array((215, 215, 225), np.float32)
        for sg in (+1, -1):
            eu, ev = proj(sg * af * 0.97, ey + s * 0.05, -0.35)
            lobe_v = ev + s * 0.062
            if u[23] % 0.5 < 0.25:
                ring = np.abs(np.sqrt(_ellipse(U, V, eu, lobe_v + s * 0.024, s * 0.024, s * 0.028)) - 1) < 0.35
            else:
                ring = _ellipse(U, V, eu, lobe_v + s * 0.008, s * 0.016, s * 0.016) < 1
            ring &= ~np.isin(cv.lab, (C["skin"], C["nose"], C["hat"], C["l_eye"], C["r_eye"], C["eye_g"]))
            cv.paint(ring, C["ear_r"], field(metal, 0.8 + 0.25 * np.sin((U + V) * 400), 0.0))

    # ---------------------------------------------------------------- camera
    img = cv.img
    vign = 1 - 0.18 * ((X - 0.5) ** 2 + (Y - 0.5) ** 2) * 2
    img = img * vign[..., None]
    img = img + white * (2.0 + 3.0 * u[32])
    pil = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    radius = (2.0 + 0.8 * u[33] if at["Blurry"] else 0.3 + 0.25 * u[33]) * S / 128
    pil = pil.filter(ImageFilter.GaussianBlur(float(radius)))
    return Render(image=np.asarray(pil, dtype=np.uint8).copy(), mask=cv.lab)
