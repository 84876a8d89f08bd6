"""Tests of the Face World caption grammar (mm2latent.world.captions)."""

import re
from collections import Counter

import numpy as np
import pytest

from mm2latent.world.attributes import ATTRIBUTES
from mm2latent.world.captions import (
    HELDOUT_SHAPES, HELDOUT_SYNONYMS, TRAIN_SHAPES, Caption, is_heldout_text, make_captions, stated_facts,
)

HELDOUT_RE = re.compile(r"\b(?:" + "|".join(re.escape(h) for h in HELDOUT_SYNONYMS) + r")\b", re.I)


def random_attrs(rng: np.random.Generator) -> dict[str, bool]:
    """A consistent CelebA attribute set (one hair colour, bald => no hair, beard rules)."""
    at = {a: bool(rng.random() < 0.25) for a in ATTRIBUTES}
    male = at["Male"] = bool(rng.random() < 0.45)
    at["Young"] = bool(rng.random() < 0.7)
    at["Smiling"] = bool(rng.random() < 0.5)
    at["Bald"] = bool(male and rng.random() < 0.12)
    for c in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"):
        at[c] = False
    if not at["Bald"]:
        at[("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")[int(rng.integers(4))]] = True
        at["Wavy_Hair"] = bool(rng.random() < 0.35)
        at["Straight_Hair"] = bool(not at["Wavy_Hair"] and rng.random() < 0.5)
    else:
        at["Wavy_Hair"] = at["Straight_Hair"] = at["Bangs"] = False
    if male:
        at["Mustache"] = bool(rng.random() < 0.3)
        at["Goatee"] = bool(rng.random() < 0.3)
        at["Wearing_Lipstick"] = bool(rng.random() < 0.02)
        at["Heavy_Makeup"] = bool(rng.random() < 0.02)
    else:
        for a in ("Mustache", "Goatee", "5_o_Clock_Shadow", "Sideburns"):
            at[a] = False
    at["No_Beard"] = not (at["Mustache"] or at["Goatee"])
    return at


def all_captions(n_faces: int, seed: int, split: str, per_face: int = 4):
    rng = np.random.default_rng(seed)
    for _ in range(n_faces):
        attrs = random_attrs(rng)
        for cap in make_captions(attrs, rng, n=per_face, split=split):
            yield attrs, cap


@pytest.fixture(scope="module")
def train_caps():
    return list(all_captions(2000, 0, "train", per_face=2))


@pytest.fixture(scope="module")
def heldout_caps():
    return list(all_captions(1000, 1, "heldout", per_face=2))


def test_api_shapes():
    assert len(TRAIN_SHAPES) >= 12 and len(HELDOUT_SHAPES) >= 4
    assert not set(TRAIN_SHAPES) & set(HELDOUT_SHAPES)
    assert 10 <= len(HELDOUT_SYNONYMS) <= 20
    rng = np.random.default_rng(3)
    caps = make_captions(random_attrs(rng), rng, n=5)
    assert len(caps) == 5 and all(isinstance(c, Caption) for c in caps)
    with pytest.raises(ValueError):
        make_captions(random_attrs(rng), rng, split="test")


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_facts_are_true_and_parseable(split, train_caps, heldout_caps):
    caps = train_caps if split == "train" else heldout_caps
    for attrs, cap in caps:
        assert cap.facts, cap.text
        for k, v in cap.facts.items():
            assert attrs[k] == v, (k, v, cap.text)
        assert stated_facts(cap.text) == cap.facts, cap.text


def test_no_contradictions_for_women(train_caps):
    beardish = re.compile(r"\b(beard|bearded|clean-shaven|mustache|moustache|goatee|sideburns|shadow|stubble)\b")
    for attrs, cap in train_caps:
        if not attrs["Male"]:
            assert not beardish.search(cap.text.lower()), cap.text


def test_train_split_has_no_heldout_material(train_caps):
    for _, cap in train_caps:
        assert cap.shape in TRAIN_SHAPES
        assert not cap.heldout
        assert not HELDOUT_RE.search(cap.text), cap.text


def test_heldout_split_always_heldout(heldout_caps):
    shapes = Counter()
    for _, cap in heldout_caps:
        assert cap.heldout
        assert cap.shape in HELDOUT_SHAPES or HELDOUT_RE.search(cap.text), cap.text
        assert is_heldout_text(cap.text) == bool(HELDOUT_RE.search(cap.text))
        shapes[cap.shape] += 1
    # both routes are used: held-out shapes and training shapes with held-out words
    assert set(HELDOUT_SHAPES) <= set(shapes)
    assert sum(v for k, v in shapes.items() if k in TRAIN_SHAPES) > 100
    used = {h for _, c in heldout_caps for h in HELDOUT_SYNONYMS if re.search(rf"\b{re.escape(h)}\b", c.text, re.I)}
    assert len(used) >= 10, used


def test_shape_variety(train_caps):
    shapes = Counter(c.shape for _, c in train_caps)
    assert len(shapes) >= 12
    assert set(shapes) == set(TRAIN_SHAPES)


def test_negations_and_lengths(train_caps):
    neg = sum(any(v is False and k not in ("Male", "Young") and k != "No_Beard" for k, v in c.facts.items())
              for _, c in train_caps)
    assert 0.1 * len(train_caps) < neg < 0.7 * len(train_caps)
    assert any("clean-shaven" in c.text or "no beard" in c.text for _, c in train_caps)
    assert any(re.search(r"\bnot smiling\b", c.text) for _, c in train_caps)
    assert any(re.search(r"\bno (glasses|eyeglasses)\b|without glasses", c.text) for _, c in train_caps)
    sizes = Counter(min(len(c.facts), 9) for _, c in train_caps)
    assert sizes[1] + sizes[2] > 0 and sum(v for k, v in sizes.items() if k >= 6) > 50


def test_salient_attributes_mentioned_more(train_caps):
    rate = Counter()
    present = Counter()
    for attrs, c in train_caps:
        for a in ("Eyeglasses", "Bags_Under_Eyes"):
            if attrs[a]:
                present[a] += 1
                rate[a] += a in c.facts
    assert rate["Eyeglasses"] / present["Eyeglasses"] > 1.5 * rate["Bags_Under_Eyes"] / present["Bags_Under_Eyes"]


def test_captions_of_one_face_differ():
    rng = np.random.default_rng(5)
    attrs = random_attrs(rng)
    caps = make_captions(attrs, rng, n=8)
    assert len({c.text for c in caps}) >= 7
    assert len({frozenset(c.facts.items()) for c in caps}) >= 4


def test_determinism():
    attrs = random_attrs(np.random.default_rng(11))
    for split in ("train", "heldout"):
        a = make_captions(attrs, np.random.default_rng(42), n=6, split=split)
        b = make_captions(attrs, np.random.default_rng(42), n=6, split=split)
        assert a == b
    c = make_captions(attrs, np.random.default_rng(43), n=6)
    assert [x.text for x in c] != [x.text for x in make_captions(attrs, np.random.default_rng(42), n=6)]


def test_vocabulary_breadth(train_caps):
    words = Counter(w for _, c in train_caps[:1000] for w in re.findall(r"[a-z0-9'-]+", c.text.lower()))
    assert len(words) > 250, len(words)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_natural_surface(split):
    for attrs, c in all_captions(300, 7, split, per_face=2):
        t = c.text
        assert t == t.strip() and "  " not in t and " ," not in t and " ." not in t and ".." not in t
        if c.shape != "keywords":
            assert t[0].isupper() and t.endswith("."), t
        assert not re.search(r"\ba [aeiou]", t.lower()), t


def test_mm_celeba_style_and_subjects(train_caps):
    mm = [c.text for _, c in train_caps if c.shape == "mm_style"]
    assert any(re.match(r"This (man|woman|gentleman|lady) (looks young and )?has ", t) for t in mm)
    assert any(re.search(r"\. (He|She) (wears|is wearing) ", t) for t in mm)
    text = " ".join(c.text.lower() for _, c in train_caps)
    for w in ("gentleman", "lady", "guy", "elderly", "middle-aged", "youthful", "glasses", "eyeglasses",
              "blonde", "necktie", "tie", "o'clock", "bangs", "lipstick", "make-up"):
        assert re.search(rf"\b{re.escape(w)}\b", text), w


def test_robust_to_any_attribute_vector():
    rng = np.random.default_rng(9)
    for _ in range(300):
        attrs = {a: bool(rng.random() < 0.5) for a in ATTRIBUTES}  # possibly inconsistent
        for split in ("train", "heldout"):
            for c in make_captions(attrs, rng, n=2, split=split):
                assert all(attrs[k] == v for k, v in c.facts.items())
                assert stated_facts(c.text) == c.facts, c.text


def test_stated_facts_on_handwritten_text():
    f = stated_facts("This man looks young and has black hair, mustache. He wears necktie.")
    assert f == {"Male": True, "Young": True, "Black_Hair": True, "Mustache": True, "Wearing_Necktie": True}
    f = stated_facts("A blurry photo of an elderly lady without glasses, not smiling.")
    assert f == {"Blurry": True, "Young": False, "Male": False, "Eyeglasses": False, "Smiling": False}
    assert stated_facts("He is clean-shaven and bald.") == {"Male": True, "No_Beard": True, "Bald": True}
    assert stated_facts("blond, wavy hair, earrings, young woman") == {
        "Blond_Hair": True, "Wavy_Hair": True, "Wearing_Earrings": True, "Young": True, "Male": False}
