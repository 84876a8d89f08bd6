"""Caption grammar of the Face World.

Turns the CelebA attributes of a rendered face into varied English captions in
the spirit of MM-CelebA-HQ ("This man looks young and has black hair, a
mustache. He wears a tie."), plus many other sentence shapes: photo captions,
keyword fragments, imperative prompts, relative clauses, colon tags, ...

Design
------
Every attribute mention is drawn from a finite table of surface forms (noun
phrases, predicates, prenominal adjectives, verb phrases, keywords) and every
surface form carries the facts it states.  The generator records the facts of
each piece of text it emits, so :class:`Caption.facts` is exact, and
:func:`stated_facts` re-derives them from text alone by longest-match lookup
over the same tables.  Facts are only ever taken from ``attrs``, so a caption
never states something false.

Held-out evaluation: the shapes in :data:`HELDOUT_SHAPES` and every surface
form containing a word of :data:`HELDOUT_SYNONYMS` are only used when
``split="heldout"``; every held-out caption contains at least one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mm2latent.world.attributes import ATTRIBUTES

__all__ = [
    "Caption", "make_captions", "stated_facts", "is_heldout_text",
    "TRAIN_SHAPES", "HELDOUT_SHAPES", "HELDOUT_SYNONYMS", "SHAPES",
]


@dataclass(frozen=True)
class Caption:
    text: str
    facts: dict[str, bool]  # attribute -> value the text states (True asserted, False negated)
    shape: str              # sentence-shape id
    heldout: bool           # uses a held-out shape or a held-out synonym


# --------------------------------------------------------------------------
# Held-out vocabulary
# --------------------------------------------------------------------------

HELDOUT_SYNONYMS: frozenset[str] = frozenset({
    "spectacles", "bespectacled", "fellow", "grinning", "golden", "silver",
    "chestnut", "curly", "moustache", "fringe", "stubble", "full lips",
    "squinting", "puffy eyes",
})

_HELDOUT_RE = re.compile(
    r"\b(?:" + "|".join(re.escape(h) for h in sorted(HELDOUT_SYNONYMS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


def is_heldout_text(text: str) -> bool:
    """True if ``text`` contains a held-out synonym (as a whole word/phrase)."""
    return _HELDOUT_RE.search(text) is not None


# --------------------------------------------------------------------------
# Surface-form tables
# --------------------------------------------------------------------------
# Slots of an item:
#   np    noun phrase usable after "has" / "with" / in lists ("black hair", "a hat")
#   wnp   noun phrase usable only after "with" ("the mouth slightly open")
#   wear  noun phrase usable after "wears" / "is wearing" / "with"
#   pred  predicate after "is" ("smiling", "bald", "not wearing a hat")
#   adj   prenominal adjective ("a smiling woman")
#   vp    complete verb phrase after the subject ("smiles", "doesn't wear glasses")
#   post  postmodifier after the subject noun ("in a hat", "without glasses")
#   kw    keyword fragment ("glasses", "no hat")
#   hairpred / hairtag  hair-only: "hair is black and wavy" / "hair: black, wavy"
#   frame / sent        Blurry-only: "a blurry photo of" / "The photo is blurry."
_SLOTS = ("np", "wnp", "wear", "pred", "adj", "vp", "post", "kw", "hairpred", "hairtag", "frame", "sent")


def _spec(kind: str, neg: bool = False, **slots) -> dict:
    d = {s: tuple(slots.get(s, ())) for s in _SLOTS}
    # wear items are also predicates ("is wearing X") and with-phrases ("with X")
    if kind == "wear":
        d["pred"] = d["pred"] + tuple("wearing " + w for w in d["wear"] if not neg)
    # keywords: the article-less noun phrases and the predicates by default
    if not d["kw"]:
        d["kw"] = tuple(dict.fromkeys(_strip_article(x) for x in d["np"] + d["wear"] + d["pred"]))
    return {"kind": kind, "neg": neg, "slots": d}


def _strip_article(s: str) -> str:
    for a in ("a ", "an ", "the "):
        if s.startswith(a):
            return s[len(a):]
    return s


_FORMS: dict[tuple[str, bool], dict] = {
    ("Eyeglasses", True): _spec(
        "wear", wear=["glasses", "eyeglasses", "a pair of glasses", "reading glasses", "round glasses",
                      "thin-framed glasses", "spectacles", "a pair of spectacles"],
        adj=["bespectacled"], post=["in glasses", "in spectacles"]),
    ("Eyeglasses", False): _spec(
        "wear", neg=True, np=["no glasses", "no eyeglasses"], pred=["not wearing glasses"],
        vp=["doesn't wear glasses", "does not wear eyeglasses", "wears no glasses"],
        post=["without glasses", "without eyeglasses", "without spectacles"],
        kw=["no glasses", "no eyeglasses"]),
    ("Wearing_Hat", True): _spec(
        "wear", wear=["a hat", "a cap", "a woolly hat", "a baseball cap", "a beanie", "a sun hat"], post=["in a hat", "in a cap"]),
    ("Wearing_Hat", False): _spec(
        "wear", neg=True, np=["no hat"], pred=["not wearing a hat", "bareheaded"],
        vp=["doesn't wear a hat", "has nothing on the head"], post=["without a hat"],
        kw=["no hat", "hatless", "bareheaded"]),
    ("Smiling", True): _spec(
        "state", pred=["smiling", "grinning", "beaming", "cheerful"], adj=["smiling", "grinning", "beaming", "cheerful"],
        np=["a smile", "a big smile", "a warm smile", "a friendly smile", "a cheerful smile", "a happy expression"],
        vp=["smiles", "smiles at the camera", "smiles warmly", "is grinning"],
        kw=["smiling", "smile", "grinning", "big smile", "happy expression"]),
    ("Smiling", False): _spec(
        "state", neg=True, pred=["not smiling"], adj=["unsmiling", "serious-looking"],
        np=["a serious expression", "a neutral expression", "a calm, neutral face"], vp=["doesn't smile", "is not smiling"],
        kw=["not smiling", "no smile", "neutral expression", "serious expression", "straight-faced"]),
    ("Bald", True): _spec(
        "state", pred=["bald", "bald-headed"], adj=["bald", "bald-headed"],
        np=["a bald head", "a shaved head", "no hair on the head"], kw=["bald", "bald head", "shaved head"]),
    ("Bald", False): _spec(
        "state", neg=True, pred=["not bald"], np=["a full head of hair"], kw=["not bald", "full head of hair"]),
    ("Bangs", True): _spec("have", np=["bangs", "a fringe", "bangs across the forehead", "short bangs"]),
    ("Bangs", False): _spec("have", neg=True, np=["no bangs"], vp=["has no fringe"], kw=["no bangs"]),
    ("Mustache", True): _spec(
        "have", np=["a mustache", "a thin mustache", "a thick mustache", "a moustache"], adj=["mustachioed"]),
    ("Mustache", False): _spec("have", neg=True, np=["no mustache"], kw=["no mustache"]),
    ("Goatee", True): _spec("have", np=["a goatee", "a small goatee", "a pointed goatee"]),
    ("Goatee", False): _spec("have", neg=True, np=["no goatee"], kw=["no goatee"]),
    # No_Beard is inverted: True reads as a negation ("no beard"), False as a beard.
    ("No_Beard", True): _spec(
        "state", neg=True, pred=["clean-shaven"], adj=["clean-shaven"], np=["no beard", "a clean-shaven face"],
        vp=["doesn't have a beard", "has no facial hair"], kw=["clean-shaven", "no beard", "beardless"]),
    ("No_Beard", False): _spec(
        "have", np=["a beard", "facial hair", "a full beard"], adj=["bearded"], pred=["bearded"],
        kw=["beard", "bearded", "facial hair"]),
    ("5_o_Clock_Shadow", True): _spec(
        "have", np=["a 5 o'clock shadow", "a five o'clock shadow", "stubble", "light stubble"]),
    ("Sideburns", True): _spec("have", np=["sideburns", "long sideburns", "thick sideburns"]),
    ("Receding_Hairline", True): _spec("have", np=["a receding hairline", "a thinning hairline"]),
    ("Bags_Under_Eyes", True): _spec(
        "have", np=["bags under the eyes", "under-eye bags", "dark bags under the eyes", "bags beneath the eyes",
                 "tired-looking eyes", "puffy eyes"]),
    ("Narrow_Eyes", True): _spec(
        "have", np=["narrow eyes", "narrowed eyes", "small, narrow eyes", "squinting eyes"], adj=["squinting"]),
    ("Narrow_Eyes", False): _spec("have", neg=True, np=["wide eyes", "wide-open eyes"]),
    ("Arched_Eyebrows", True): _spec("have", np=["arched eyebrows", "arched brows", "high-arched eyebrows", "elegantly arched eyebrows"]),
    ("Bushy_Eyebrows", True): _spec("have", np=["bushy eyebrows", "thick eyebrows", "bushy brows", "heavy eyebrows", "dense eyebrows"]),
    ("Rosy_Cheeks", True): _spec("have", np=["rosy cheeks", "pink cheeks", "flushed cheeks", "blushing cheeks"], adj=["rosy-cheeked"]),
    ("Pale_Skin", True): _spec(
        "state", np=["pale skin", "a pale complexion", "a fair complexion", "very fair skin", "porcelain skin",
                     "a light complexion"],
        adj=["pale", "pale-skinned", "fair-skinned"], pred=["pale", "pale-skinned", "fair-skinned"]),
    ("Chubby", True): _spec(
        "state", np=["a chubby face", "a round face", "chubby cheeks", "a plump face"], adj=["chubby", "plump", "round-faced"],
        pred=["chubby", "plump", "round-faced"]),
    ("Chubby", False): _spec(
        "state", neg=True, np=["a slim face", "a thin face"], adj=["slim-faced"], pred=["slim-faced"]),
    ("Double_Chin", True): _spec("have", np=["a double chin", "a slight double chin"]),
    ("Big_Nose", True): _spec("have", np=["a big nose", "a large nose", "a prominent nose", "a broad nose"]),
    ("Big_Nose", False): _spec("have", neg=True, np=["a small nose", "a little nose"]),
    ("Pointy_Nose", True): _spec("have", np=["a pointy nose", "a pointed nose"]),
    ("Big_Lips", True): _spec("have", np=["big lips", "thick lips", "plump lips", "fleshy lips", "full lips"]),
    ("Big_Lips", False): _spec("have", neg=True, np=["thin lips"]),
    ("Mouth_Slightly_Open", True): _spec(
        "have", np=["a slightly open mouth", "parted lips", "a half-open mouth"],
        wnp=["the mouth slightly open", "lips slightly parted", "lips apart"],
        kw=["mouth slightly open", "parted lips", "open mouth", "slightly open mouth"]),
    ("Mouth_Slightly_Open", False): _spec(
        "have", neg=True, np=["a closed mouth"], kw=["closed mouth", "mouth closed"]),
    ("Wearing_Lipstick", True): _spec(
        "wear", wear=["lipstick", "red lipstick", "bright lipstick", "pink lipstick", "dark lipstick", "coloured lipstick"], vp=["has lipstick on"]),
    ("Wearing_Lipstick", False): _spec(
        "wear", neg=True, np=["no lipstick"], pred=["not wearing lipstick"], vp=["doesn't wear lipstick"],
        kw=["no lipstick"]),
    ("Heavy_Makeup", True): _spec(
        "wear", wear=["heavy makeup", "heavy make-up", "lots of makeup", "a lot of make-up", "full makeup",
                       "dramatic makeup", "glamorous make-up"],
        adj=["heavily made-up"], kw=["heavy makeup", "heavy make-up", "lots of makeup", "heavily made-up"]),
    ("Heavy_Makeup", False): _spec(
        "wear", neg=True, np=["light makeup", "minimal make-up"], vp=["wears little makeup"],
        kw=["light makeup", "minimal make-up"]),
    ("Wearing_Earrings", True): _spec(
        "wear", wear=["earrings", "a pair of earrings", "stud earrings", "hoop earrings", "dangling earrings",
                           "gold earrings"]),
    ("Wearing_Earrings", False): _spec(
        "wear", neg=True, np=["no earrings"], pred=["not wearing earrings"], kw=["no earrings"]),
    ("Wearing_Necklace", True): _spec(
        "wear", wear=["a necklace", "a thin necklace", "a pendant necklace", "a chain necklace", "a gold necklace",
                           "a beaded necklace"]),
    ("Wearing_Necklace", False): _spec(
        "wear", neg=True, np=["no necklace"], post=["without a necklace"], kw=["no necklace"]),
    ("Wearing_Necktie", True): _spec("wear", wear=["a necktie", "a tie", "a striped tie", "a dark tie", "a suit and tie"], post=["in a tie"]),
    ("Wearing_Necktie", False): _spec(
        "wear", neg=True, np=["no tie"], pred=["not wearing a tie"], post=["without a tie"], kw=["no tie"]),
    ("Young", True): _spec(
        "age", adj=["young", "youthful", "young-looking"], pred=["young", "youthful", "in the prime of youth"],
        vp=["looks young", "looks youthful", "seems young"], kw=["young", "youthful"]),
    ("Young", False): _spec(
        "age", adj=["older", "elderly", "middle-aged", "old", "mature", "senior", "aging"],
        pred=["elderly", "middle-aged", "older", "getting on in years"],
        vp=["looks older", "looks middle-aged", "looks elderly", "seems older"],
        kw=["older", "elderly", "middle-aged", "old", "senior"]),
    ("Blurry", True): _spec(
        "blur", frame=["a blurry photo of", "a blurred picture of", "an out-of-focus photo of", "a blurry image of"],
        sent=["The photo is blurry.", "The image is a little blurry.", "The picture is out of focus."],
        kw=["blurry", "blurry photo", "out of focus"]),
    ("Blurry", False): _spec(
        "blur", neg=True, frame=["a sharp photo of", "a crisp photo of", "a clear picture of"],
        sent=["The photo is sharp.", "The image is in sharp focus."], kw=["sharp photo", "in focus"]),
}

_HAIR_COLOUR_WORDS = {
    "Black_Hair": ("black", "jet-black", "raven-black", "coal-black"),
    "Blond_Hair": ("blond", "blonde", "fair", "light blond", "platinum blond", "sandy blond", "golden"),
    "Brown_Hair": ("brown", "dark brown", "light brown", "auburn", "mousy brown", "chestnut"),
    "Gray_Hair": ("gray", "grey", "white", "salt-and-pepper", "graying", "silver"),
}
_HAIR_COLOUR_ADJ = {
    "Black_Hair": ("black-haired", "dark-haired"),
    "Blond_Hair": ("blond", "blonde", "blond-haired", "golden-haired"),
    "Brown_Hair": ("brown-haired", "brunette"),
    "Gray_Hair": ("gray-haired", "grey-haired", "white-haired", "silver-haired"),
}
_HAIR_TEXTURE_WORDS = {
    "Wavy_Hair": ("wavy", "slightly wavy", "loose wavy", "curly"),
    "Straight_Hair": ("straight", "long straight", "sleek straight"),
}
_HAIR_TEXTURE_ADJ = {
    "Wavy_Hair": ("wavy-haired", "curly-haired"),
    "Straight_Hair": ("straight-haired",),
}


def _one_word(ws):
    return tuple(w for w in ws if " " not in w)


for _c, _ws in _HAIR_COLOUR_WORDS.items():
    _FORMS[(_c, True)] = _spec(
        "hair", np=[f"{w} hair" for w in _ws], adj=_HAIR_COLOUR_ADJ[_c], pred=_HAIR_COLOUR_ADJ[_c],
        kw=[f"{w} hair" for w in _ws], hairpred=[f"hair is {w}" for w in _ws], hairtag=[f"hair: {w}" for w in _ws])
for _t, _ws in _HAIR_TEXTURE_WORDS.items():
    _FORMS[(_t, True)] = _spec(
        "hair", np=[f"{w} hair" for w in _ws], adj=_HAIR_TEXTURE_ADJ[_t], kw=[f"{w} hair" for w in _ws],
        hairpred=[f"hair is {w}" for w in _one_word(_ws)], hairtag=[f"hair: {w}" for w in _one_word(_ws)])


def _merged_hair(colour: str, texture: str) -> dict:
    cs, ts = _HAIR_COLOUR_WORDS[colour], _HAIR_TEXTURE_WORDS[texture]
    t1 = _one_word(ts)
    np_ = [f"{t} {c} hair" for t in ts for c in cs] + [f"{c}, {t} hair" for c in cs for t in t1]
    return _spec("hair", np=np_, kw=np_,
                 hairpred=[f"hair is {c} and {t}" for c in cs for t in t1] + [f"hair is {t} and {c}" for c in cs for t in t1],
                 hairtag=[f"hair: {c}, {t}" for c in cs for t in t1])


def _merged_nose(big: bool) -> dict:
    sizes = ("big", "large") if big else ("small",)
    return _spec("have", neg=not big,
                 np=[f"a {s}{sep}{p} nose" for s in sizes for p in ("pointy", "pointed") for sep in (", ", " ")])


def _merged_brows() -> dict:
    return _spec("have", np=[f"{b}{sep}{a} {n}" for b in ("bushy", "thick") for a in ("arched", "high-arched")
                             for n in ("eyebrows", "brows") for sep in (", ", " ")])


# Subject nouns and pronouns: (text, facts)
_MALE_NOUNS = ("man", "gentleman", "guy", "male", "fellow")
_FEMALE_NOUNS = ("woman", "lady", "female")
_NEUTRAL_NOUNS = ("person", "individual")
_PRONOUNS = {True: {"subj": "he", "obj": "him", "pos": "his"}, False: {"subj": "she", "obj": "her", "pos": "her"}}

_MALE_ONLY = {"5_o_Clock_Shadow", "Goatee", "Mustache", "No_Beard", "Sideburns"}
_NEG_FEMALE_ONLY = {"Wearing_Lipstick", "Heavy_Makeup", "Wearing_Earrings"}
_NEG_MALE_ONLY = {"Wearing_Necktie"}
_HAIR_ATTRS = set(_HAIR_COLOUR_WORDS) | set(_HAIR_TEXTURE_WORDS) | {"Bangs"}

_SALIENCE = {
    "Black_Hair": 3.0, "Blond_Hair": 3.5, "Brown_Hair": 2.5, "Gray_Hair": 3.0, "Smiling": 3.0,
    "Eyeglasses": 3.5, "Wearing_Hat": 3.5, "No_Beard": 2.5, "Mustache": 2.5, "Goatee": 2.5,
    "Wearing_Lipstick": 2.5, "Bald": 3.5, "Heavy_Makeup": 1.8, "Wavy_Hair": 1.8, "Straight_Hair": 1.2,
    "Bangs": 1.8, "Wearing_Earrings": 1.5, "Wearing_Necklace": 1.2, "Wearing_Necktie": 1.6, "Blurry": 1.5,
}
_NEG_SALIENCE = {"Eyeglasses": 2.0, "Smiling": 2.0, "Wearing_Hat": 1.5, "No_Beard": 2.0, "Blurry": 0.3,
                 "Big_Nose": 0.5, "Big_Lips": 0.5, "Narrow_Eyes": 0.4, "Chubby": 0.5, "Mouth_Slightly_Open": 0.6}


# --------------------------------------------------------------------------
# Lexicon and parser
# --------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:['\u2019\-][a-z0-9]+)*|[,:;.?!]")


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN_RE.findall(text.lower().replace("\u2019", "'")))


def _all_specs() -> list[tuple[dict[str, bool], dict]]:
    out = [({k[0]: k[1]}, v) for k, v in _FORMS.items()]
    for c in _HAIR_COLOUR_WORDS:
        for t in _HAIR_TEXTURE_WORDS:
            out.append(({c: True, t: True}, _merged_hair(c, t)))
    for big in (True, False):
        out.append(({"Big_Nose": big, "Pointy_Nose": True}, _merged_nose(big)))
    out.append(({"Bushy_Eyebrows": True, "Arched_Eyebrows": True}, _merged_brows()))
    return out


def _build_lexicon() -> tuple[dict[tuple[str, ...], dict[str, bool]], int]:
    lex: dict[tuple[str, ...], dict[str, bool]] = {}

    def add(text: str, facts: dict[str, bool]) -> None:
        toks = _tokens(_strip_article(text.lower()))
        if not toks:
            return
        if toks in lex and lex[toks] != facts:
            raise AssertionError(f"caption lexicon conflict for {text!r}: {lex[toks]} vs {facts}")
        lex[toks] = dict(facts)

    for facts, spec in _all_specs():
        for slot, forms in spec["slots"].items():
            for f in forms:
                if slot == "frame":
                    f = f.rsplit(" ", 2)[0]  # "a blurry photo of" -> "a blurry"
                    f = f.split(" ", 1)[1] if " " in f else f
                elif slot == "sent":
                    # "The photo is blurry." -> the attribute word(s) only
                    f = f.rstrip(".").split(" is ", 1)[1]
                    f = f.replace("a little ", "")
                add(f, facts)
    for n in _MALE_NOUNS:
        add(n, {"Male": True})
    for n in _FEMALE_NOUNS:
        add(n, {"Male": False})
    add("boy", {"Male": True, "Young": True})
    add("girl", {"Male": False, "Young": True})
    for g, d in _PRONOUNS.items():
        for p in d.values():
            add(p, {"Male": g})
    for p in ("himself",):
        add(p, {"Male": True})
    for p in ("herself", "hers"):
        add(p, {"Male": False})
    return lex, max(len(k) for k in lex)


_LEXICON, _MAX_ENTRY = _build_lexicon()


def stated_facts(text: str) -> dict[str, bool]:
    """Recover the attribute facts stated by a caption of this grammar.

    Longest-match lookup of the grammar's surface forms over the tokenised
    text; any other words are ignored.
    """
    toks = _tokens(text)
    facts: dict[str, bool] = {}
    i = 0
    while i < len(toks):
        for L in range(min(_MAX_ENTRY, len(toks) - i), 0, -1):
            hit = _LEXICON.get(toks[i:i + L])
            if hit is not None:
                facts.update(hit)
                i += L
                break
        else:
            i += 1
    return facts


# --------------------------------------------------------------------------
# Generation machinery
# --------------------------------------------------------------------------

@dataclass
class _Item:
    facts: dict[str, bool]
    kind: str
    neg: bool
    slots: dict[str, tuple[str, ...]]
    key: str  # main attribute name, for bookkeeping

    def has(self, ctx: "_Ctx", slot: str, filt: Callable[[str], bool] | None = None) -> bool:
        forms = ctx.allowed(self.slots.get(slot, ()))
        return bool([f for f in forms if filt(f)] if filt else forms)


@dataclass
class _Ctx:
    rng: np.random.Generator
    attrs: dict[str, bool]
    allow_heldout: bool
    prefer_heldout: bool
    bare: bool = False
    blur_done: bool = False
    facts: dict[str, bool] = field(default_factory=dict)

    # -- randomness helpers ------------------------------------------------
    def rand(self) -> float:
        return float(self.rng.random())

    def choice(self, seq):
        seq = list(seq)
        return seq[int(self.rng.integers(len(seq)))]

    def allowed(self, forms) -> list[str]:
        if self.allow_heldout:
            return list(forms)
        return [f for f in forms if not is_heldout_text(f)]

    def pick(self, forms) -> str:
        forms = self.allowed(forms)
        if self.prefer_heldout:
            ho = [f for f in forms if is_heldout_text(f)]
            if ho and self.rand() < 0.6:
                return self.choice(ho)
        return self.choice(forms)

    # -- fact-recording emitters ---------------------------------------------
    def record(self, facts: dict[str, bool]) -> None:
        for k, v in facts.items():
            if self.attrs[k] != v or self.facts.get(k, v) != v:
                raise AssertionError(f"caption grammar would state a false fact {k}={v}")
            self.facts[k] = v

    def say(self, item: _Item, slot: str, filt: Callable[[str], bool] | None = None) -> str:
        forms = item.slots[slot]
        text = self.pick([f for f in forms if filt(f)] if filt else forms)
        self.record(item.facts)
        if self.bare and slot in ("np", "wear") and text.startswith(("a ", "an ")):
            text = text.split(" ", 1)[1]
        return text

    def pron(self, case: str = "subj") -> str:
        male = bool(self.attrs["Male"])
        self.record({"Male": male})
        return _PRONOUNS[male][case]

    def noun(self, neutral_p: float = 0.15, young_noun_p: float = 0.1) -> str:
        if self.rand() < neutral_p:
            return self.choice(_NEUTRAL_NOUNS)
        male = bool(self.attrs["Male"])
        if self.attrs["Young"] and self.rand() < young_noun_p:
            self.record({"Male": male, "Young": True})
            return "boy" if male else "girl"
        self.record({"Male": male})
        return self.pick(_MALE_NOUNS if male else _FEMALE_NOUNS)


def _a_an(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _join(ctx: _Ctx, parts: list[str], conj: str = "and") -> str:
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        return parts[0] if parts else ""
    if len(parts) == 2:
        return f"{parts[0]} {conj} {parts[1]}"
    oxford = "," if ctx.rand() < 0.3 else ""
    return ", ".join(parts[:-1]) + f"{oxford} {conj} {parts[-1]}"


@dataclass
class _Sel:
    items: list[_Item]
    age: _Item | None
    blur: _Item | None


def _make_item(key: tuple[str, bool], attrs: dict[str, bool]) -> _Item:
    spec = _FORMS[key]
    slots = dict(spec["slots"])
    name, val = key
    # Keep beard wording honest for the particular face.
    if name == "No_Beard" and val and attrs["5_o_Clock_Shadow"]:
        slots = {s: tuple(f for f in fs if "shaven" not in f) for s, fs in slots.items()}
    if name == "No_Beard" and not val:
        if attrs["Mustache"] and not attrs["Goatee"]:
            slots = {s: tuple(f for f in fs if "beard" not in f) for s, fs in slots.items()}
        elif attrs["Mustache"] or attrs["Goatee"]:
            slots = {s: tuple(f for f in fs if "full beard" not in f) for s, fs in slots.items()}
    return _Item({name: val}, spec["kind"], spec["neg"], slots, name)


def _candidates(attrs: dict[str, bool]) -> tuple[list[tuple[_Item, float]], list[tuple[_Item, float]]]:
    male = bool(attrs["Male"])
    bald = bool(attrs["Bald"])
    pos, neg = [], []
    colour_done = False
    for name in ATTRIBUTES:
        if name in ("Male", "Young"):
            continue
        val = bool(attrs[name])
        key = (name, val)
        if key not in _FORMS:
            continue
        if name in _MALE_ONLY and not male:
            continue
        if bald and name in _HAIR_ATTRS:
            continue
        if name in _HAIR_COLOUR_WORDS:
            if colour_done:  # never mention two hair colours
                continue
            colour_done = True
        spec = _FORMS[key]
        if spec["neg"]:
            if name in _NEG_FEMALE_ONLY and male:
                continue
            if name in _NEG_MALE_ONLY and not male:
                continue
            neg.append((_make_item(key, attrs), _NEG_SALIENCE.get(name, 1.0)))
        else:
            pos.append((_make_item(key, attrs), _SALIENCE.get(name, 1.0)))
    return pos, neg


def _weighted_pick(rng: np.random.Generator, pool: list[tuple[_Item, float]], k: int) -> list[_Item]:
    k = min(k, len(pool))
    if k <= 0:
        return []
    w = np.array([p[1] for p in pool], dtype=np.float64)
    idx = rng.choice(len(pool), size=k, replace=False, p=w / w.sum())
    return [pool[int(i)][0] for i in sorted(idx)]


def _merge(items: list[_Item]) -> list[_Item]:
    by = {it.key: it for it in items}
    out = list(items)

    def replace(keys: list[str], facts: dict[str, bool], spec: dict) -> None:
        first = min(out.index(by[k]) for k in keys)
        for k in keys:
            out.remove(by[k])
        out.insert(min(first, len(out)), _Item(facts, spec["kind"], spec["neg"], dict(spec["slots"]), keys[0]))

    colour = next((c for c in _HAIR_COLOUR_WORDS if c in by), None)
    texture = next((t for t in _HAIR_TEXTURE_WORDS if t in by), None)
    if colour and texture:
        replace([colour, texture], {colour: True, texture: True}, _merged_hair(colour, texture))
    if "Pointy_Nose" in by and "Big_Nose" in by:
        big = by["Big_Nose"].facts["Big_Nose"]
        replace(["Big_Nose", "Pointy_Nose"], {"Big_Nose": big, "Pointy_Nose": True}, _merged_nose(big))
    if "Bushy_Eyebrows" in by and "Arched_Eyebrows" in by:
        replace(["Bushy_Eyebrows", "Arched_Eyebrows"], {"Bushy_Eyebrows": True, "Arched_Eyebrows": True},
                _merged_brows())
    return out


def _select(ctx: _Ctx, lo: int, hi: int, age_p: float, need_hair: bool = False) -> _Sel:
    rng = ctx.rng
    pos, neg = _candidates(ctx.attrs)
    k = int(rng.integers(lo, hi + 1))
    r = ctx.rand()
    n_neg = 0 if r < 0.62 else (1 if r < 0.92 else 2)
    n_neg = min(n_neg, k, len(neg))
    chosen = _weighted_pick(rng, neg, n_neg)
    chosen += _weighted_pick(rng, pos, k - n_neg)
    if not chosen:  # degenerate: take whatever exists
        chosen = _weighted_pick(rng, pos + neg, 1)
    if need_hair and not any(it.kind == "hair" for it in chosen):
        hair = [p for p in pos if p[0].kind == "hair"]
        if hair:
            if len(chosen) >= hi:
                chosen.pop(int(rng.integers(len(chosen))))
            chosen.append(_weighted_pick(rng, hair, 1)[0])
    order = rng.permutation(len(chosen))
    chosen = [chosen[int(i)] for i in order]
    keys = {it.key for it in chosen}
    if ("Mustache" in keys or "Goatee" in keys) and ctx.rand() < 0.7:
        chosen = [it for it in chosen if not (it.key == "No_Beard" and not it.facts["No_Beard"])]
    blur = next((it for it in chosen if it.key == "Blurry"), None)
    items = _merge([it for it in chosen if it.key != "Blurry"])
    age = None
    if ctx.rand() < age_p:
        age = _make_item(("Young", bool(ctx.attrs["Young"])), ctx.attrs)
    return _Sel(items, age, blur)


# -- phrase builders -----------------------------------------------------------

_MODE_SLOT = {"has": "np", "wears": "wear", "is": "pred", "vp": "vp"}
_KIND_MODE = {"have": "has", "hair": "has", "wear": "wears", "state": "is"}


def _prefer_mode(ctx: "_Ctx", it: _Item, avail: list[str]) -> str:
    want = _KIND_MODE.get(it.kind)
    if not it.neg and want in avail and ctx.rand() < 0.8:
        return want
    return ctx.choice(avail)


def _predicate(ctx: _Ctx, items: list[_Item], age: _Item | None = None,
               modes=("has", "wears", "is", "vp")) -> str:
    """'has black hair and a mustache, wears glasses and is smiling'."""
    groups: dict[str, list[str]] = {m: [] for m in modes}
    for it in sorted(items, key=lambda i: i.neg):
        avail = [m for m in modes if it.has(ctx, _MODE_SLOT[m])]
        if not avail:
            continue
        m = _prefer_mode(ctx, it, avail)
        groups[m].append(ctx.say(it, _MODE_SLOT[m]))
    parts: list[str] = []
    if age is not None:
        if ctx.rand() < 0.5 and "is" in groups:
            groups["is"].insert(0, ctx.say(age, "pred"))
        else:
            parts.append(ctx.say(age, "vp"))
    if groups.get("wears") and groups.get("is"):
        # "wears X and is wearing Y" -> "wears X and Y"
        moved = [p for p in groups["is"] if p.startswith("wearing ")]
        groups["is"] = [p for p in groups["is"] if not p.startswith("wearing ")]
        groups["wears"] += [p[len("wearing "):] for p in moved]
    body: list[str] = []
    if groups.get("has"):
        body.append("has " + _join(ctx, groups["has"]))
    if groups.get("wears"):
        verb = "wears" if groups.get("is") else ctx.choice(["wears", "is wearing"])
        body.append(verb + " " + _join(ctx, groups["wears"]))
    if groups.get("is"):
        body.append("is " + _join(ctx, groups["is"]))
    body += groups.get("vp", [])
    order = ctx.rng.permutation(len(body))
    parts += [body[int(i)] for i in order]
    return _join(ctx, parts)


def _participial(form: str) -> bool:
    """Predicates that can follow a noun: 'wearing a hat', 'smiling', 'not smiling'."""
    return form.startswith("not ") or form.split(" ", 1)[0].endswith("ing")


def _postmod(ctx: _Ctx, items: list[_Item]) -> str:
    """' in a hat with black hair and a mustache, smiling' (leading space) or ''."""
    post, withs, parts = [], [], []
    for it in sorted(items, key=lambda i: i.neg):
        opts = []
        if it.has(ctx, "np"):
            opts.append(("with", "np", 1.0))
        if it.has(ctx, "wear"):
            opts.append(("with", "wear", 1.0))
        if it.has(ctx, "wnp"):
            opts.append(("with", "wnp", 0.7))
        if it.has(ctx, "pred", _participial):
            opts.append(("part", "pred", 0.7))
        if it.has(ctx, "post"):
            opts.append(("post", "post", 0.8))
        if not opts:
            continue
        w = np.array([o[2] for o in opts])
        kind, slot, _ = opts[int(ctx.rng.choice(len(opts), p=w / w.sum()))]
        text = ctx.say(it, slot, _participial if kind == "part" else None)
        {"with": withs, "part": parts, "post": post}[kind].append(text)
    out = ""
    if post:
        out += " " + _join(ctx, post)
    if withs:
        out += " with " + _join(ctx, withs)
    if parts:
        out += (", " if out else " ") + _join(ctx, _merge_wearing(ctx, parts))
    return out


def _merge_wearing(ctx: _Ctx, parts: list[str]) -> list[str]:
    """['wearing a hat', 'smiling', 'wearing earrings'] -> ['wearing a hat and earrings', 'smiling']."""
    wear = [p[len("wearing "):] for p in parts if p.startswith("wearing ")]
    if len(wear) < 2:
        return parts
    out, done = [], False
    for p in parts:
        if p.startswith("wearing "):
            if not done:
                out.append("wearing " + _join(ctx, wear))
                done = True
        else:
            out.append(p)
    return out


def _take_adjs(ctx: _Ctx, items: list[_Item], max_n: int, p: float) -> tuple[list[str], list[_Item]]:
    adjs, rest = [], []
    for it in items:
        if len(adjs) < max_n and it.has(ctx, "adj") and ctx.rand() < p:
            adjs.append(ctx.say(it, "adj"))
        else:
            rest.append(it)
    return adjs, rest


def _subject(ctx: _Ctx, det: str | None, adjs: list[str] = (), age: _Item | None = None,
             neutral_p: float = 0.12) -> str:
    words = []
    if adjs:
        words.append((", " if len(adjs) > 1 and ctx.rand() < 0.5 else " ").join(adjs))
    if age is not None:
        words.append(ctx.say(age, "adj"))
    words.append(ctx.noun(neutral_p=neutral_p, young_noun_p=0.0 if age is not None else 0.1))
    phrase = " ".join(words)
    if det == "a":
        return _a_an(phrase)
    if det:
        return f"{det} {phrase}"
    return phrase


def _frame(ctx: _Ctx, blur: _Item | None, plain: list[str]) -> str:
    if blur is not None:
        ctx.blur_done = True
        return ctx.say(blur, "frame")
    return ctx.choice(plain)


def _split(ctx: _Ctx, items: list[_Item]) -> tuple[list[_Item], list[_Item]]:
    if len(items) <= 1:
        return list(items), []
    cut = int(ctx.rng.integers(1, len(items)))
    return items[:cut], items[cut:]


def _kws(ctx: _Ctx, items: list[_Item]) -> list[str]:
    return [ctx.say(it, "kw") for it in items if it.has(ctx, "kw")]


# -- shapes ----------------------------------------------------------------------------
# Each shape: (fn(ctx, sel) -> text, (min items, max items), P(mention age), needs hair)

_PHOTO = ["a photo of", "a picture of", "a portrait of", "an image of", "a close-up photo of", "a headshot of",
          "a snapshot of", "a studio portrait of", "a passport-style photo of", "a candid shot of",
          "a photograph of", "a selfie of"]


def _sh_mm_style(ctx: _Ctx, s: _Sel) -> str:
    ctx.bare = ctx.rand() < 0.5
    subj = ctx.choice(["this", "the"]) + " " + ctx.noun(neutral_p=0.25, young_noun_p=0.0)
    groups: dict[str, list[str]] = {"has": [], "wears": [], "is": [], "vp": []}
    for it in sorted(s.items, key=lambda i: i.neg):
        avail = [m for m in groups if it.has(ctx, _MODE_SLOT[m])]
        if not avail:
            continue
        m = _prefer_mode(ctx, it, avail)
        groups[m].append(ctx.say(it, _MODE_SLOT[m]))
    conj = "and" if ctx.rand() < 0.6 else None

    def lst(xs):
        return _join(ctx, xs) if conj else ", ".join(xs)

    sents = []
    first = _cap(subj)
    lead = []
    if s.age is not None:
        lead.append(ctx.say(s.age, "vp"))
    if groups["has"]:
        lead.append("has " + lst(groups["has"]))
    elif groups["is"]:
        lead.append("is " + lst(groups["is"]))
        groups["is"] = []
    elif groups["wears"]:
        lead.append("wears " + lst(groups["wears"]))
        groups["wears"] = []
    elif groups["vp"]:
        lead.append(groups["vp"].pop(0))
    sents.append(first + " " + " and ".join(lead) + ".")
    rest = []
    if groups["wears"]:
        rest.append(ctx.choice(["wears", "is wearing"]) + " " + lst(groups["wears"]))
    if groups["is"]:
        rest.append("is " + lst(groups["is"]))
    if groups["vp"]:
        rest.append(_join(ctx, groups["vp"]))
    for r in (rest[int(i)] for i in ctx.rng.permutation(len(rest))):
        sents.append(_cap(ctx.pron()) + " " + r + ".")
    return " ".join(sents)


def _sh_photo_of(ctx: _Ctx, s: _Sel) -> str:
    adjs, rest = _take_adjs(ctx, s.items, 2, 0.5)
    return _cap(_frame(ctx, s.blur, _PHOTO)) + " " + _subject(ctx, "a", adjs, s.age) + _postmod(ctx, rest) + "."


def _sh_keywords(ctx: _Ctx, s: _Sel) -> str:
    kws = _kws(ctx, s.items)
    if s.blur is not None:
        ctx.blur_done = True
        kws.append(ctx.say(s.blur, "kw"))
    order = ctx.rng.permutation(len(kws))
    kws = [kws[int(i)] for i in order]
    head = ((ctx.say(s.age, "kw") + " ") if s.age is not None else "") + ctx.noun(neutral_p=0.05)
    parts = [head] + kws if ctx.rand() < 0.5 else kws + [head]
    return ", ".join(parts) + ("." if ctx.rand() < 0.2 else "")


def _sh_person_in_picture(ctx: _Ctx, s: _Sel) -> str:
    a, b = _split(ctx, s.items)
    where = ctx.choice(["picture", "photo", "image", "photograph", "portrait", "snapshot"])
    text = f"The person in the {where} is " + _subject(ctx, "a", (), s.age, neutral_p=0.0) + _postmod(ctx, a) + "."
    if b:
        text += " " + _cap(ctx.pron()) + " " + _predicate(ctx, b) + "."
    return text


def _sh_imperative(ctx: _Ctx, s: _Sel) -> str:
    verb = ctx.choice(["Generate", "Draw", "Create", "Render", "Make", "Show me", "Produce", "Paint",
                       "Synthesize", "Sketch", "Design", "Give me"])
    adjs, rest = _take_adjs(ctx, s.items, 1, 0.4)
    if s.blur is not None or ctx.rand() < 0.35:
        head = _frame(ctx, s.blur, ["an image of", "a portrait of", "a photo of", "a face of"]) + " "
    else:
        head = ""
    return f"{verb} {head}" + _subject(ctx, "a", adjs, s.age, neutral_p=0.1) + _postmod(ctx, rest) + "."


def _sh_who_clause(ctx: _Ctx, s: _Sel) -> str:
    age_adj = s.age if ctx.rand() < 0.5 else None
    subj = _subject(ctx, ctx.choice(["a", "the"]), (), age_adj, neutral_p=0.2)
    return _cap(subj) + " who " + _predicate(ctx, s.items, s.age if age_adj is None else None) + "."


def _sh_with_phrase(ctx: _Ctx, s: _Sel) -> str:
    adjs, rest = _take_adjs(ctx, s.items, 1, 0.3) if len(s.items) > 1 else ([], s.items)
    return _cap(_subject(ctx, "a", adjs, s.age)) + _postmod(ctx, rest) + "."


def _sh_short_pronoun(ctx: _Ctx, s: _Sel) -> str:
    return _cap(ctx.pron()) + " " + _predicate(ctx, s.items, s.age) + "."


def _sh_subject_is(ctx: _Ctx, s: _Sel) -> str:
    subj = _cap(_subject(ctx, ctx.choice(["the", "this"]), (), None, neutral_p=0.15))
    preds, nps = [], []
    if s.age is not None:
        preds.append(ctx.say(s.age, "pred"))
    for it in s.items:
        if it.has(ctx, "pred") and (ctx.rand() < 0.75 or not (it.has(ctx, "np") or it.has(ctx, "wear"))):
            preds.append(ctx.say(it, "pred"))
        elif it.has(ctx, "np"):
            nps.append(ctx.say(it, "np"))
        elif it.has(ctx, "wear"):
            nps.append(ctx.say(it, "wear"))
    if not preds:
        return subj + " has " + _join(ctx, nps) + "."
    preds = sorted(preds, key=_participial)  # "is bald and wearing a cap", not "is wearing a cap and bald"
    text = subj + " is " + _join(ctx, _merge_wearing(ctx, preds))
    if nps:
        text += ctx.choice([" and has ", ", with "]) + _join(ctx, nps)
    return text + "."


def _sh_narrative(ctx: _Ctx, s: _Sel) -> str:
    kind = ctx.choice(["photo", "picture", "portrait", "close-up", "headshot", "snapshot"])
    if s.blur is not None:
        ctx.blur_done = True
        opening = "This is " + ctx.say(s.blur, "frame") + " "
    else:
        opening = f"This is {_a_an(kind)} of "
    text = opening + _subject(ctx, "a", (), s.age, neutral_p=0.0) + "."
    chunks: list[list[_Item]] = []
    items = list(s.items)
    while items:
        n = int(ctx.rng.integers(1, 4))
        chunks.append(items[:n])
        items = items[n:]
    for ch in chunks:
        if ctx.rand() < 0.2:
            p = "the " + ctx.noun(neutral_p=0.3, young_noun_p=0.0)
        else:
            p = ctx.pron()
        text += " " + _cap(p) + " " + _predicate(ctx, ch) + "."
    return text


def _sh_face_of(ctx: _Ctx, s: _Sel) -> str:
    adjs, rest = _take_adjs(ctx, s.items, 2, 0.5)
    head = ctx.choice(["The face of", "Close-up of the face of", "Face of", "A face of"])
    return head + " " + _subject(ctx, "a", adjs, s.age) + _postmod(ctx, rest) + "."


def _sh_there_is(ctx: _Ctx, s: _Sel) -> str:
    a, b = _split(ctx, s.items)
    where = ctx.choice(["in the photo", "in the picture", "in this image", "in the frame", "in this snapshot",
                        "in front of the camera"])
    text = "There is " + _subject(ctx, "a", (), s.age) + _postmod(ctx, a) + " " + where
    if b:
        if ctx.rand() < 0.5:
            text += ". " + _cap(ctx.pron()) + " " + _predicate(ctx, b)
        else:
            text += "; " + ctx.pron() + " " + _predicate(ctx, b)
    return text + "."


def _sh_hair_first(ctx: _Ctx, s: _Sel) -> str:
    hair = next(it for it in s.items if it.kind == "hair" and it.has(ctx, "hairpred"))
    rest = [it for it in s.items if it is not hair]
    text = _cap(ctx.pron("pos")) + " " + ctx.say(hair, "hairpred")
    if rest or s.age is not None:
        sep = ctx.choice(["; ", ", and ", ". "])
        p = ctx.pron()
        text += sep + (_cap(p) if sep == ". " else p) + " " + _predicate(ctx, rest, s.age)
    return text + "."


def _sh_colon_tags(ctx: _Ctx, s: _Sel) -> str:
    head = ((ctx.say(s.age, "kw") + " ") if s.age is not None else "") + ctx.noun(neutral_p=0.1)
    return _cap(head) + ": " + ", ".join(_kws(ctx, s.items)) + "."


# held-out shapes

def _sh_qa(ctx: _Ctx, s: _Sel) -> str:
    q = ctx.choice(["Who is in the photo?", "Who do we see here?", "Who is pictured?", "Whose face is this?"])
    adjs, rest = _take_adjs(ctx, s.items, 2, 0.4)
    return q + " " + _cap(_subject(ctx, "a", adjs, s.age)) + _postmod(ctx, rest) + "."


def _sh_fronted(ctx: _Ctx, s: _Sel) -> str:
    front, rest = [], []
    for it in s.items:
        if len(front) < 2 and it.has(ctx, "pred"):
            front.append(it)
        else:
            rest.append(it)
    if front:
        lead = _join(ctx, _merge_wearing(ctx, [ctx.say(it, "pred") for it in front]))
    else:
        first, rest = rest[0], rest[1:]
        lead = "with " + ctx.say(first, "np" if first.has(ctx, "np") else "wear")
    subj = _subject(ctx, "the", (), s.age, neutral_p=0.1)
    tail = _predicate(ctx, rest) if rest else ctx.choice(["looks at the camera", "faces the viewer", "poses for the camera"])
    return _cap(lead) + ", " + subj + " " + tail + "."


def _sh_features_first(ctx: _Ctx, s: _Sel) -> str:
    feats = []
    negs = [it for it in s.items if it.neg]
    items = [it for it in s.items if not it.neg] or negs[:1]
    negs = [it for it in negs if it not in items]
    for it in items:
        slot = "np" if it.has(ctx, "np") else ("wear" if it.has(ctx, "wear") else "kw")
        feats.append(ctx.say(it, slot))
    plural = len(feats) > 1
    verb = ctx.choice([("stands out on", "stand out on"), ("defines", "define"), ("characterizes", "characterize"),
                       ("is the first thing you notice about", "are the first things you notice about")])[plural]
    text = _cap(_join(ctx, feats)) + f" {verb} " + _subject(ctx, "this", (), s.age, neutral_p=0.1)
    if negs:
        text += "; " + ctx.pron() + " " + _predicate(ctx, negs)
    return text + "."


def _sh_record(ctx: _Ctx, s: _Sel) -> str:
    fields = []
    if ctx.rand() < 0.85:
        fields.append("Gender: " + ("male" if ctx.attrs["Male"] else "female"))
        ctx.record({"Male": bool(ctx.attrs["Male"])})
    if s.age is not None:
        fields.append("Age: " + ctx.say(s.age, "kw"))
    hair = [it for it in s.items if it.kind == "hair" and it.has(ctx, "hairtag")]
    if hair:
        fields.append(_cap(ctx.say(hair[0], "hairtag")))
    rest = [it for it in s.items if not hair or it is not hair[0]]
    expr = [it for it in rest if it.key == "Smiling" and it.has(ctx, "pred")]
    if expr:
        fields.append("Expression: " + ctx.say(expr[0], "pred"))
    acc = [it for it in rest if it.kind == "wear" and it not in expr]
    if acc:
        ctx.bare = True
        fields.append("Accessories: " + ", ".join(ctx.say(it, "wear" if it.has(ctx, "wear") else "kw")
                                                  for it in acc))
        ctx.bare = False
    other = [it for it in rest if it not in expr and it not in acc]
    if other:
        fields.append(ctx.choice(["Features", "Face", "Details"]) + ": " + ", ".join(_kws(ctx, other)))
    if s.blur is not None:
        ctx.blur_done = True
        fields.append("Image: " + ctx.say(s.blur, "kw"))
    if not fields:
        fields.append("Gender: " + ("male" if ctx.attrs["Male"] else "female"))
        ctx.record({"Male": bool(ctx.attrs["Male"])})
    return ". ".join(fields) + "."


def _sh_imagine(ctx: _Ctx, s: _Sel) -> str:
    verb = ctx.choice(["Imagine", "Picture", "Envision"])
    adjs, rest = _take_adjs(ctx, s.items, 2, 0.5)
    return f"{verb} " + _subject(ctx, "a", adjs, s.age) + _postmod(ctx, rest) + "."


_ShapeFn = Callable[[_Ctx, _Sel], str]

_TRAIN_TABLE: dict[str, tuple[_ShapeFn, tuple[int, int], float, bool]] = {
    "mm_style": (_sh_mm_style, (2, 6), 0.6, False),
    "photo_of": (_sh_photo_of, (1, 4), 0.5, False),
    "keywords": (_sh_keywords, (2, 6), 0.5, False),
    "person_in_picture": (_sh_person_in_picture, (2, 5), 0.6, False),
    "imperative": (_sh_imperative, (1, 4), 0.5, False),
    "who_clause": (_sh_who_clause, (2, 5), 0.5, False),
    "with_phrase": (_sh_with_phrase, (1, 4), 0.5, False),
    "short_pronoun": (_sh_short_pronoun, (1, 2), 0.25, False),
    "subject_is": (_sh_subject_is, (2, 4), 0.4, False),
    "narrative": (_sh_narrative, (5, 7), 0.85, False),
    "face_of": (_sh_face_of, (1, 3), 0.5, False),
    "there_is": (_sh_there_is, (2, 4), 0.4, False),
    "hair_first": (_sh_hair_first, (2, 5), 0.3, True),
    "colon_tags": (_sh_colon_tags, (2, 6), 0.5, False),
}
_HELDOUT_TABLE: dict[str, tuple[_ShapeFn, tuple[int, int], float, bool]] = {
    "qa": (_sh_qa, (1, 4), 0.5, False),
    "fronted": (_sh_fronted, (2, 5), 0.5, False),
    "features_first": (_sh_features_first, (2, 4), 0.4, False),
    "record": (_sh_record, (3, 7), 0.7, False),
    "imagine": (_sh_imagine, (1, 4), 0.5, False),
}
TRAIN_SHAPES: tuple[str, ...] = tuple(_TRAIN_TABLE)
HELDOUT_SHAPES: tuple[str, ...] = tuple(_HELDOUT_TABLE)
SHAPES = {**_TRAIN_TABLE, **_HELDOUT_TABLE}


def _has_hair(attrs: dict[str, bool]) -> bool:
    return not attrs["Bald"] and any(attrs[a] for a in list(_HAIR_COLOUR_WORDS) + list(_HAIR_TEXTURE_WORDS))


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:?!])", r"\1", text)
    text = text.replace(",,", ",").replace("..", ".")
    return text


def _one(attrs: dict[str, bool], rng: np.random.Generator, shape: str, allow_heldout: bool,
         prefer_heldout: bool) -> Caption:
    fn, (lo, hi), age_p, need_hair = SHAPES[shape]
    ctx = _Ctx(rng=rng, attrs=attrs, allow_heldout=allow_heldout, prefer_heldout=prefer_heldout)
    sel = _select(ctx, lo, hi, age_p, need_hair)
    text = fn(ctx, sel)
    if sel.blur is not None and not ctx.blur_done:
        sent = ctx.say(sel.blur, "sent")
        text = text + " " + sent if text.endswith(".") else text + ", " + sent[0].lower() + sent[1:].rstrip(".")
    text = _tidy(text)
    heldout = shape in _HELDOUT_TABLE or is_heldout_text(text)
    return Caption(text=text, facts=dict(ctx.facts), shape=shape, heldout=heldout)


def make_captions(attrs: dict[str, bool], rng: np.random.Generator, n: int = 4,
                  split: str = "train") -> list[Caption]:
    """``n`` captions of a face with CelebA attributes ``attrs``.

    ``split="train"`` uses only training shapes and vocabulary;
    ``split="heldout"`` returns captions that each use at least one held-out
    shape or held-out synonym. Deterministic given the state of ``rng``.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    missing = [a for a in ATTRIBUTES if a not in attrs]
    if missing:
        raise KeyError(f"attrs is missing {missing}")
    attrs = {a: bool(attrs[a]) for a in ATTRIBUTES}
    train_ok = [s for s in TRAIN_SHAPES if not SHAPES[s][3] or _has_hair(attrs)]
    out: list[Caption] = []
    seen: set[str] = set()
    for _ in range(n):
        cap = None
        for attempt in range(12):
            if split == "train":
                shape = train_ok[int(rng.integers(len(train_ok)))]
                cap = _one(attrs, rng, shape, allow_heldout=False, prefer_heldout=False)
            else:
                if attempt >= 6 or rng.random() < 0.45:
                    shape = HELDOUT_SHAPES[int(rng.integers(len(HELDOUT_SHAPES)))]
                else:
                    shape = train_ok[int(rng.integers(len(train_ok)))]
                cap = _one(attrs, rng, shape, allow_heldout=True, prefer_heldout=True)
                if not cap.heldout:
                    continue
            if cap.text not in seen or attempt >= 8:
                break
        seen.add(cap.text)
        out.append(cap)
    return out
