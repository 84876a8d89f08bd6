"""The CelebA attributes the Face World draws (CelebA names, CelebA order).

Each is a boolean of a rendered sample. Constraints between them (one hair
colour, bald means no hair colour, No_Beard means neither mustache nor goatee)
are enforced by :func:`mm2latent.world.params.sample_params` and
:func:`mm2latent.world.params.set_attribute`.
"""

ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee",
    "Gray_Hair", "Heavy_Makeup", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
ATTRIBUTE_INDEX = {a: i for i, a in enumerate(ATTRIBUTES)}
NUM_ATTRIBUTES = len(ATTRIBUTES)

HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
HAIR_TEXTURES = ("Straight_Hair", "Wavy_Hair")


def check_attribute_names(names: list[str], flag: str) -> list[str]:
    """``names`` unchanged if the world draws every one; else one clear error naming ``flag``."""
    from ..common.errors import UserError

    unknown = [n for n in names if n not in ATTRIBUTES]
    if unknown:
        raise UserError(f"unknown attribute(s) {', '.join(unknown)} for {flag} (known: {', '.join(ATTRIBUTES)})")
    return names


def parse_attribute_list(spec: str, flag: str) -> list[str]:
    """"Wearing_Hat,Eyeglasses" -> the names, checked by :func:`check_attribute_names`."""
    return check_attribute_names([s.strip() for s in spec.split(",") if s.strip()], flag)
