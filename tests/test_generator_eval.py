"""Generator realism evaluation on tiny models: structure, references, blur."""

import numpy as np
import torch

from mm2latent.eval.generator import blur, class_frequencies, evaluate_generator
from mm2latent.models.clip import CLIP, CLIPConfig
from mm2latent.models.stylegan2 import Generator, StyleGAN2Config


def tiny_generator_and_encoder():
    torch.manual_seed(0)
    G = Generator(StyleGAN2Config(resolution=64, z_dim=16, w_dim=16, mapping_layers=1,
                                  channels={4: 16, 8: 16, 16: 16, 32: 8, 64: 8})).eval()
    enc = CLIP(CLIPConfig(embed_dim=16, image_resolution=32, vision_layers=1, vision_width=32, vision_patch_size=16,
                          context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=1,
                          transformer_layers=1))
    return G, enc


def test_blur_keeps_constants_and_smooths_edges():
    x = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(blur(x), x, atol=1e-5)
    e = torch.zeros(1, 3, 32, 32)
    e[..., 16:] = 1
    b = blur(e)
    assert 0.2 < b[0, 0, 5, 15].item() < 0.8 and b[0, 0, 5, 0].item() < 0.01


def test_class_frequencies_sum_to_one():
    f = class_frequencies(np.array([[0, 1], [1, 18]]))
    assert f.sum() == 1 and f[1] == 0.5 and len(f) == 19


def test_evaluate_generator_reports_references():
    G, enc = tiny_generator_and_encoder()
    r = evaluate_generator(G, enc, num=24, truncation=0.7)
    for k in ("generated", "renders_val", "blurred_val"):
        assert np.isfinite(r[k]["frechet"]) and r[k]["frechet"] >= -1e-6
    # a random, untrained generator is farther from the renders than other renders are
    assert r["generated"]["frechet"] > r["renders_val"]["frechet"]
    assert r["sampling"] == "mapping(z), z ~ N(0, I)"


def test_report_says_how_prior_samples_were_drawn():
    """A mixture's component draw changes the samples' class shares, so the report names it."""
    from mm2latent.eval.generator import prior_sampling
    from mm2latent.models.latent_prior import GaussianLatentPrior

    x = torch.randn(400, 4, generator=torch.Generator().manual_seed(0))
    assert prior_sampling(GaussianLatentPrior.fit(x)) == "w from the fitted latent prior (one Gaussian)"
    mix = GaussianLatentPrior.fit(x, components=3)
    assert prior_sampling(mix) == "w from the fitted latent prior (3 components, drawn systematically)"


def test_class_frequencies_separate_parser_bias_from_generator():
    """With a parser, each class's pixel share is reported three ways: the parser on samples,
    the true masks of the renders, and the same parser on the same renders."""
    from mm2latent.eval.generator import parse_all, render_split
    from mm2latent.models.registry import build_model

    G, enc = tiny_generator_and_encoder()
    parser = build_model("parser", {"base": 4, "depth": 3, "max_width": 16, "size": 64}).eval()
    r = evaluate_generator(G, enc, num=12, truncation=0.7, parser=parser)
    cf = r["class_frequencies"]
    for col in ("generated", "renders", "renders_parsed"):
        assert abs(sum(v[col] for v in cf.values()) - 1) < 1e-6
    test, masks = render_split("test", 12, 64)
    want = class_frequencies(parse_all(parser, test))
    assert [v["renders_parsed"] for v in cf.values()] == [float(x) for x in want]
    assert [v["renders"] for v in cf.values()] == [float(x) for x in class_frequencies(masks)]


def test_class_frequencies_of_reconstructions():
    """With an image encoder, the parser's class shares on the decoder's reconstructions of val
    renders are a fourth column (over-drawing by the synthesis itself, not by the prior's w)."""
    from mm2latent.eval.generator import parse_all, reconstruct, render_split
    from mm2latent.models.inversion import ImageEncoder, ImageEncoderConfig
    from mm2latent.models.registry import build_model

    G, enc = tiny_generator_and_encoder()
    image_encoder = ImageEncoder(ImageEncoderConfig(size=64, z_dim=16, widths=[8, 8, 16, 16])).eval()
    parser = build_model("parser", {"base": 4, "depth": 3, "max_width": 16, "size": 64}).eval()
    r = evaluate_generator(G, enc, num=12, truncation=0.7, parser=parser, image_encoder=image_encoder)
    cf = r["class_frequencies"]
    assert abs(sum(v["reconstructed"] for v in cf.values()) - 1) < 1e-6
    with torch.no_grad():
        want = class_frequencies(parse_all(parser, reconstruct(G, image_encoder, render_split("val", 12, 64)[0])))
    assert [v["reconstructed"] for v in cf.values()] == [float(x) for x in want]
    assert "reconstructed" not in evaluate_generator(G, enc, num=12, parser=parser)["class_frequencies"]["hair"]

def test_judged_reconstructions_report_the_generator_ceiling():
    """The judges score renders against their own truth and reconstructions against the
    same truth; an image set identical to the renders scores identically."""
    from mm2latent.eval.generator import judge_reconstructions, render_split, split_attributes
    from mm2latent.models.registry import build_model
    from mm2latent.world.attributes import ATTRIBUTES

    torch.manual_seed(0)
    x, masks = render_split("val", 6, 64)
    attrs = split_attributes("val", 6)
    assert attrs.shape == (6, len(ATTRIBUTES)) and set(np.unique(attrs)) <= {0.0, 1.0}
    parser = build_model("parser", {"base": 4, "depth": 3, "max_width": 16, "size": 64}).eval()
    analyzer = build_model("analyzer", {"stem": 8, "widths": [8, 16], "hidden": 16, "size": 64, "aux_seg": False}).eval()
    r = judge_reconstructions(x, x.clone(), masks, attrs, parser, analyzer)
    assert r["num"] == 6 and r["renders"] == r["reconstructions"]
    assert 0 <= r["renders"]["parser_miou"] <= 1 and 0 <= r["renders"]["predicted_male_share"] <= 1
    r2 = judge_reconstructions(x, -x, masks, attrs, parser, analyzer)
    assert r2["reconstructions"] != r2["renders"]
