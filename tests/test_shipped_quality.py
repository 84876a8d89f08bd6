"""Quality floors of the shipped world weights on small held-out world samples.

The floors sit below the figures measured on 200 test faces (docs/reports/*.json),
so that they catch a broken or swapped checkpoint, not noise.
"""

from __future__ import annotations

import pytest
import torch

from mm2latent.models.registry import default_weights_dir

WEIGHTS = default_weights_dir()
#: mask AE reconstruction mIoU floor on the 16 faces below, clean (shifted: floor - 0.07). The shipped (stop 25)
#: AE measures 0.900 clean / 0.834 shifted; stop 24's scored 0.895 / 0.826, stop 23's 0.881 / 0.817
MASK_AE_FLOOR = 0.895
pytestmark = pytest.mark.skipif(not (WEIGHTS / "mapping_net.safetensors").exists(), reason="no shipped weights")


@pytest.fixture(scope="module")
def pipe():
    from mm2latent.pipeline import Pipeline

    return Pipeline.from_pretrained()


@pytest.fixture(scope="module")
def data():
    from mm2latent.eval.pipeline import render_test

    return render_test(16, 128)


def test_sizes_fit_the_budget():
    total = sum(p.stat().st_size for p in WEIGHTS.glob("*.safetensors"))
    assert total < 100e6


def test_parser_on_renders(pipe, data):
    from mm2latent.models.metrics import confusion_matrix, mean_iou

    d = pipe.controls.derive(data["image"])
    assert mean_iou(confusion_matrix(d["mask"], data["mask"])) > 0.75  # measured 0.835 on 200


@torch.no_grad()
def test_generation_follows_the_mask(pipe, data):
    from mm2latent.models.metrics import confusion_matrix, mean_iou
    from mm2latent.eval.pipeline import _batched_embeddings

    seeds = list(range(16))
    with_mask = pipe.synthesize(pipe.latents(_batched_embeddings(pipe, data, slice(0, 16), ("text", "mask")), seeds), seeds)
    text_only = pipe.synthesize(pipe.latents(_batched_embeddings(pipe, data, slice(0, 16), ("text",)), seeds), seeds)
    m_with = mean_iou(confusion_matrix(pipe.controls.derive(with_mask)["mask"], data["mask"]))
    m_without = mean_iou(confusion_matrix(pipe.controls.derive(text_only)["mask"], data["mask"]))
    assert m_with > 0.28  # measured 0.370 on 200 faces
    assert m_with > m_without + 0.07  # measured 0.370 vs 0.214


@torch.no_grad()
def test_text_moves_the_face(pipe):
    from mm2latent.world.attributes import ATTRIBUTES

    seeds = list(range(6))

    def p(text, attr):
        x = pipe.generate_tensor(text=text, seeds=seeds)
        return pipe.controls.derive(x)["attributes"][:, ATTRIBUTES.index(attr)].mean().item()

    # measured with the shipped weights (6 seeds): Male 0.43 vs 0.00, Black_Hair 1.00 vs 0.00.
    # The first sharpened generator drew most faces male (0.98 vs 0.75); the analyzer-loss
    # generator fixed that but "a man" still gives a man only about half the time.
    assert p("a man", "Male") > p("a woman", "Male") + 0.25
    assert p("a person with black hair", "Black_Hair") > p("a person with blond hair", "Black_Hair") + 0.4


def test_inversion_reconstructs(pipe, data):
    from mm2latent.eval.editing import psnr

    inv = [pipe.invert(data["image"][i:i + 1]) for i in range(8)]
    rec = torch.cat([v.reconstruction for v in inv])
    assert psnr(rec, torch.cat([v.image for v in inv])).mean() > 19.0  # W+ inverter: measured 21.4 dB on 200


def test_wplus_inverter_beats_the_w_encoder(pipe, data):
    """The e4e-style W+ inverter reconstructs held-out renders better than the W encoder it starts from,
    and pivotal tuning better still."""
    from mm2latent.eval.editing import psnr

    if pipe.wplus_inverter is None:
        pytest.skip("no shipped W+ inverter")
    x = data["image"][:8]
    wplus = torch.cat([pipe.invert(x[i:i + 1]).reconstruction for i in range(8)])
    w = torch.cat([pipe.invert(x[i:i + 1], inverter="w").reconstruction for i in range(8)])
    gain = (psnr(wplus, x) - psnr(w, x)).mean()
    assert gain > 1.5  # measured 2.95 dB on these 8 (22.75 vs 19.81); 2.0 dB on 64 test renders (docs/results.md)
    tuned = pipe.invert(x[:1], tune_steps=50)
    assert psnr(tuned.reconstruction, x[:1]) > psnr(wplus[:1], x[:1]) + 2.0  # measured 29.1 vs 23.2 dB


@torch.no_grad()
def test_reconstructions_keep_gender_and_attributes(pipe):
    """The generator's ceiling for conditional generation: the judges on reconstructions
    of 64 held-out renders (what `mm2latent eval generator` reports as
    reconstruction_judged). Guards the gender bias the first sharpened generator had
    (Male balanced accuracy 0.73, 68 % of reconstructions called male against 45 % true)."""
    from mm2latent.eval.generator import judge_reconstructions, reconstruct, render_split, split_attributes
    from mm2latent.world.attributes import ATTRIBUTES

    n = 64
    x, masks = render_split("test", n, 128)
    truth = split_attributes("test", n)
    r = judge_reconstructions(x, reconstruct(pipe.G, pipe.image_encoder, x), masks, truth,
                              pipe.controls.parser, pipe.controls.analyzer)["reconstructions"]
    # measured on these 64: Male 0.89, 53 % called male (47 % true), attributes 0.72, parser mIoU 0.45
    assert r["male_balanced_accuracy"] > 0.8
    assert abs(r["predicted_male_share"] - truth[:, ATTRIBUTES.index("Male")].mean()) < 0.15
    assert r["attribute_balanced_accuracy"] > 0.65
    assert r["parser_miou"] > 0.38


@torch.no_grad()
def test_reconstructions_give_accessories_to_their_wearers(pipe):
    """Earrings and necklaces in the reconstructions of 64 held-out renders go to the faces that wear
    them. Before stop 33 the encoder's w did not tell wearers apart (linear probe 0.68 / 0.67, about
    what gender alone gives) and the synthesis drew the same speck on everyone: 7.6 earring pixels per
    wearer against 4.6 per non-wearer on 800 faces, necklaces 17.8 against 5.1. The shipped phase 10
    draws 16.9 / 2.2 and 47.6 / 0.7 there (docs/reports/accessory_encoding.json)."""
    from mm2latent.common.palette import CLASS_NAMES
    from mm2latent.eval.generator import parse_all, reconstruct, render_split, split_attributes
    from mm2latent.world.attributes import ATTRIBUTES

    n = 64
    x, _ = render_split("test", n, 128)
    truth = split_attributes("test", n)
    seg = parse_all(pipe.controls.parser, reconstruct(pipe.G, pipe.image_encoder, x))
    for cls, attr, factor in (("ear_r", "Wearing_Earrings", 3.0), ("neck_l", "Wearing_Necklace", 8.0)):
        px = (seg == CLASS_NAMES.index(cls)).reshape(n, -1).sum(1)
        wear = truth[:, ATTRIBUTES.index(attr)] > 0.5
        assert wear.sum() >= 5 and (~wear).sum() >= 5
        assert px[wear].mean() > factor * px[~wear].mean() + 1, (cls, px[wear].mean(), px[~wear].mean())


@torch.no_grad()
def test_attribute_classifier_on_renders(pipe):
    """Balanced accuracy over the attributes with both classes present in 96 held-out renders."""
    import numpy as np

    from mm2latent.eval.generator import split_attributes
    from mm2latent.models.metrics import balanced_accuracy
    from mm2latent.eval.pipeline import render_test
    from mm2latent.world.attributes import ATTRIBUTES

    n = 96
    x = render_test(n, 128)["image"]
    truth = split_attributes("test", n).astype(bool)
    pred = torch.cat([pipe.controls.derive(x[i:i + 32])["attributes"] for i in range(0, n, 32)]).numpy() > 0.5
    both = (truth.sum(0) >= 3) & ((~truth).sum(0) >= 3)
    acc = balanced_accuracy(pred[:, both], truth[:, both])
    assert pred.shape[1] == len(ATTRIBUTES) and np.nanmean(acc) > 0.85  # measured 0.96 on 1,000


@torch.no_grad()
def test_fitted_prior_samples_are_faces(pipe):
    """Samples drawn the way `mm2latent sample` draws them parse as faces: skin in the
    middle, hair or a hat above it, background at the corners."""
    from mm2latent.pipeline.sampling import sample_generator
    from mm2latent.common.palette import CLASS_NAMES

    assert pipe.latent_prior is not None
    imgs, _ = sample_generator(pipe.G, 16, 0, 0.7, prior=pipe.latent_prior)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    m = pipe.controls.derive(x)["mask"]
    idx = {n: i for i, n in enumerate(CLASS_NAMES)}
    s = m.shape[-1]
    centre = m[:, s * 3 // 8:s * 5 // 8, s * 3 // 8:s * 5 // 8]
    top = m[:, : s // 4, s // 4: s * 3 // 4]
    corners = torch.cat([m[:, :8, :8], m[:, :8, -8:]], 1)
    assert ((centre == idx["skin"]) | (centre == idx["nose"])).float().mean() > 0.6
    assert ((top == idx["hair"]) | (top == idx["hat"])).float().mean() > 0.2
    assert (corners == idx["background"]).float().mean() > 0.7


def test_fitted_prior_keeps_hats(pipe):
    """The shipped prior is a mixture, so truncation-0.7 samples keep the rare modes: the
    parser finds hats in them about as often as in renders (hat pixel share 0.012 on test
    renders, 0.011 measured on 2,000 samples; one Gaussian's samples gave 0.0009)."""
    from mm2latent.pipeline.sampling import sample_generator
    from mm2latent.common.palette import CLASS_NAMES

    assert pipe.latent_prior.config.components > 1
    imgs, _ = sample_generator(pipe.G, 64, 0, 0.7, prior=pipe.latent_prior)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    m = pipe.controls.derive(x)["mask"]
    hat = (m == CLASS_NAMES.index("hat")).float().flatten(1).mean(1)
    assert hat.mean() > 0.004 and (hat > 0.05).sum() >= 2


def test_sample_class_shares_match_the_renders(pipe):
    """Issue 3's last check, on 64 untruncated samples against 64 test renders, both parsed:
    large classes and face parts within 0.75-1.3x of the renders' share, hats, earrings and necklaces
    within 0.4-1.5x (phase 10 here: 0.99 / 0.69 / 1.10; phase 9: 0.80 / 0.65 / 0.88 since mixture components are drawn systematically, 0.62 / 0.53 / 1.00 with independent draws; the phase-7 generator drew brows 1.8-1.9x, lips 1.44x, earrings 2.2x, necklaces
    2.1x here; phase 8: face parts 0.90-1.07x; 2,000-sample figures in docs/reports/generator_eval_untruncated.json)."""
    from mm2latent.pipeline.sampling import sample_generator
    from mm2latent.common.palette import CLASS_NAMES
    from mm2latent.eval.pipeline import render_test

    imgs, _ = sample_generator(pipe.G, 64, 0, 1.0, prior=pipe.latent_prior)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    renders = render_test(64, 128)["image"]
    counts = [torch.bincount(pipe.controls.derive(y)["mask"].flatten(), minlength=len(CLASS_NAMES)).double()
              for y in (x, renders)]
    ratio = {n: float(a / b) for n, a, b in zip(CLASS_NAMES, counts[0] / counts[0].sum(), counts[1] / counts[1].sum())}
    for name in ("background", "skin", "hair", "cloth", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "mouth",
                 "u_lip", "l_lip"):
        assert 0.75 < ratio[name] < 1.3, (name, ratio[name])
    for name in ("hat", "ear_r", "neck_l"):  # accessories: 64 samples hold few, so only "drawn, not over-drawn"
        assert 0.4 < ratio[name] < 1.5, (name, ratio[name])


@torch.no_grad()
def test_encoder_matches_captions_and_attributes(pipe):
    """The world text/image encoder on 64 held-out renders: caption retrieval among 64 far above
    chance, and the zero-shot probes of attributes it reads (docs/reports/encoder_eval.json)."""
    import numpy as np

    from mm2latent.common.imageio import image_to_tensor
    from mm2latent.eval.encoder import PROBES, balanced_accuracy, recall_at_k
    from mm2latent.world.attributes import ATTRIBUTES
    from mm2latent.world.dataset import SPLIT_SEEDS
    from mm2latent.world.sample import make_sample

    samples = [make_sample(SPLIT_SEEDS["test"], i, 128, n_captions=1, n_heldout=0) for i in range(64)]
    enc = pipe.controls.encoder.eval()
    img = enc.encode_image(torch.stack([image_to_tensor(s.image) for s in samples]))
    txt = enc.encode_text([s.captions[0].text for s in samples])
    assert recall_at_k(txt @ img.t(), 5) > 0.3  # chance 5/64 = 0.08; measured 0.56 (first encoder 0.41)
    truth = np.stack([s.params.attr_vector() > 0.5 for s in samples])
    for a in ("Male", "Wearing_Hat", "Black_Hair"):  # the report's zero-shot probes
        t = enc.encode_text(list(PROBES[a]))
        pred = ((img @ t[0]) > (img @ t[1])).numpy()
        assert balanced_accuracy(pred, truth[:, ATTRIBUTES.index(a)]) > 0.75, a  # measured 0.91 / 1.00 / 0.91 on 1,000


@torch.no_grad()
def test_text_guidance_raises_text_fidelity(pipe):
    """The shipped text guidance (mapping_net.json) is on and, on 32 held-out faces with held-out
    grammar captions, the guided faces state more of the caption's facts than unguided ones
    (measured: 0.617 vs 0.577 on these 32; 0.636 vs 0.568 on 200 test faces)."""
    from mm2latent.eval.pipeline import _batched_embeddings, fact_accuracy, render_test

    assert pipe.text_guidance > 0
    data = render_test(32, 128)
    seeds = list(range(32))
    emb = _batched_embeddings(pipe, data, slice(0, 32), ("text",), "caption_heldout")
    acc = {}
    for g in (0.0, pipe.text_guidance):
        x = pipe.synthesize(pipe.latents(emb, seeds, text_guidance=g), seeds)
        acc[g] = fact_accuracy(pipe.controls.derive(x)["attributes"], data["facts_heldout"])["accuracy"]
    assert acc[pipe.text_guidance] > 0.55
    assert acc[pipe.text_guidance] > acc[0.0]


@torch.no_grad()
def test_mask_ae_reconstructs_held_out_masks(pipe, data):
    """The shipped mask AE's 512-d code keeps the layout: reconstruction mIoU on 16 held-out masks,
    clean and shifted/rotated/scaled (the perturbation of `mm2latent eval perception`)."""
    from mm2latent.models.metrics import confusion_matrix, mean_iou, perturb_masks

    ae = pipe.controls.mask_ae
    clean = mean_iou(confusion_matrix(ae.reconstruct(data["mask"]), data["mask"]))
    inp, tgt = perturb_masks(data["mask"], "affine", seed=1234)
    affine = mean_iou(confusion_matrix(ae.reconstruct(inp), tgt))
    assert clean > MASK_AE_FLOOR and affine > MASK_AE_FLOOR - 0.07
