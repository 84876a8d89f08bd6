"""CLIP/FaRL towers, preprocessing, FaRL/OpenAI checkpoint loading, our format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mm2latent.common.errors import UserError
from mm2latent.models.clip import (
    CLIP,
    CLIP_MEAN,
    CLIP_STD,
    CLIPConfig,
    ResidualAttentionBlock,
    load_clip,
    preprocess_images,
    save_clip,
)
from mm2latent.models.farl_loader import config_from_state_dict, convert_farl, load_farl

# same key layout as ViT-B/16, small shapes (widths multiple of 64 so that the
# head count can be inferred from shapes, as for real CLIP checkpoints)
SMALL = CLIPConfig(
    embed_dim=64,
    image_resolution=32,
    vision_layers=2,
    vision_width=128,
    vision_patch_size=8,
    context_length=77,
    vocab_size=49408,
    transformer_width=128,
    transformer_heads=2,
    transformer_layers=2,
)
TEXTS = ["a smiling woman with blond hair", "a man with a mustache and no glasses", ""]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = CLIP(SMALL).eval()
    with torch.no_grad():  # non-trivial norms and biases so that layout mistakes show
        for name, p in m.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 40, 52, generator=g) * 2 - 1


def _embed(m, images):
    with torch.no_grad():
        return m.encode_image(images), m.encode_text(TEXTS)


# --------------------------------------------------------------------------
# architecture
# --------------------------------------------------------------------------


def _expected_clip_keys(vision_layers: int, text_layers: int) -> set[str]:
    block = [
        "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias",
        "attn.out_proj.weight", "attn.out_proj.bias", "ln_2.weight", "ln_2.bias",
        "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
    ]  # fmt: skip
    keys = {
        "positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
        "ln_final.weight", "ln_final.bias", "visual.class_embedding", "visual.positional_embedding",
        "visual.proj", "visual.conv1.weight", "visual.ln_pre.weight", "visual.ln_pre.bias",
        "visual.ln_post.weight", "visual.ln_post.bias",
    }  # fmt: skip
    keys |= {f"transformer.resblocks.{i}.{b}" for i in range(text_layers) for b in block}
    keys |= {f"visual.transformer.resblocks.{i}.{b}" for i in range(vision_layers) for b in block}
    return keys


def test_vit_b16_matches_openai_clip():
    cfg = CLIPConfig.farl_vit_b16()
    with torch.device("meta"):
        m = CLIP(cfg)
    sd = m.state_dict()
    assert set(sd) == _expected_clip_keys(12, 12)
    assert len(sd) == 302
    assert sum(p.numel() for p in m.parameters()) == 149_620_737  # OpenAI CLIP ViT-B/16
    shapes = {
        "visual.conv1.weight": (768, 3, 16, 16),
        "visual.positional_embedding": (197, 768),
        "visual.class_embedding": (768,),
        "visual.proj": (768, 512),
        "token_embedding.weight": (49408, 512),
        "positional_embedding": (77, 512),
        "text_projection": (512, 512),
        "logit_scale": (),
        "transformer.resblocks.11.attn.in_proj_weight": (1536, 512),
        "visual.transformer.resblocks.11.mlp.c_fc.weight": (3072, 768),
    }
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    assert config_from_state_dict(sd) == cfg
    assert cfg.vision_heads == 12


def test_world_small_preset():
    cfg = CLIPConfig.world_small()
    assert cfg.image_resolution in (64, 112, 128) and cfg.vision_patch_size == 16
    assert 128 <= cfg.vision_width <= 256 and 4 <= cfg.vision_layers <= 6
    assert cfg.embed_dim == 512 and cfg.context_length == 77 and cfg.vocab_size == 49408
    with torch.device("meta"):
        m = CLIP(cfg)
    assert set(m.state_dict()) == _expected_clip_keys(cfg.vision_layers, cfg.transformer_layers)
    assert config_from_state_dict(m.state_dict()) == cfg


def test_block_matches_torch_multihead_attention():
    """Our attention reads in_proj/out_proj exactly as nn.MultiheadAttention does."""
    torch.manual_seed(3)
    width, heads, n = 64, 4, 9
    blk = ResidualAttentionBlock(width, heads)
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.2)
    mha = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    mha.load_state_dict({k[len("attn.") :]: v for k, v in blk.state_dict().items() if k.startswith("attn.")})
    x = torch.randn(2, n, width)
    causal = torch.full((n, n), float("-inf")).triu_(1)  # CLIP's build_attention_mask
    for mask, is_causal in ((None, False), (causal, True)):
        h = F.layer_norm(x, (width,), blk.ln_1.weight, blk.ln_1.bias, 1e-5)
        ref = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h2 = F.layer_norm(ref, (width,), blk.ln_2.weight, blk.ln_2.bias, 1e-5)
        f = blk.mlp.c_fc(h2)
        ref = ref + blk.mlp.c_proj(f * torch.sigmoid(1.702 * f))
        with torch.no_grad():
            assert torch.allclose(blk(x, causal=is_causal), ref.detach(), atol=1e-5)


def test_embeddings_are_unit_norm(model, images):
    img, txt = _embed(model, images)
    assert img.shape == (3, 64) and txt.shape == (3, 64)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    raw = model.encode_text(TEXTS, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))


def test_forward_gives_clip_logits(model, images):
    with torch.no_grad():
        li, lt = model(images, TEXTS)
        img, txt = _embed(model, images)
    assert li.shape == (3, 3) and torch.equal(lt, li.t())
    assert torch.allclose(li, model.logit_scale.exp() * img @ txt.t(), atol=1e-5)
    assert abs(model.logit_scale.item() - np.log(1 / 0.07)) < 1e-6


def test_text_strings_equal_token_ids(model):
    toks = model.tokenize(TEXTS)
    with torch.no_grad():
        a = model.encode_text(TEXTS)
        b = model.encode_text(toks)
        c = model.encode_text(toks[:, :20])  # shorter sequences are fine (causal)
        d = model.encode_text(TEXTS[0])
    assert torch.allclose(a, b) and torch.allclose(a, c, atol=1e-5) and torch.allclose(a[:1], d)
    with pytest.raises(UserError):
        model.encode_text(torch.full((1, 78), 5))
    with pytest.raises(UserError):
        model.encode_text(torch.tensor([[49406, 60000, 49407]]))
    with pytest.raises(UserError):
        model.encode_text([])


def test_causal_mask(model):
    toks = model.tokenize(["a woman with blond hair and earrings"])
    j = 4
    other = toks.clone()
    other[0, j] = 1234
    with torch.no_grad():

        def feats(t):
            x = model.token_embedding(t) + model.positional_embedding
            return model.transformer(x)

        a, b = feats(toks), feats(other)
        assert torch.allclose(a[0, :j], b[0, :j], atol=1e-6)
        assert not torch.allclose(a[0, j:], b[0, j:])
        # padding after the end token never reaches the pooled feature
        padded = toks.clone()
        eot = int(toks[0].argmax())
        padded[0, eot + 1 :] = 777
        assert torch.allclose(model.encode_text(toks), model.encode_text(padded), atol=1e-6)


# --------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------


def test_preprocessing_is_differentiable_and_batched(model):
    torch.manual_seed(4)
    x = (torch.rand(4, 3, 64, 48) * 2 - 1).requires_grad_(True)
    emb = model.encode_image(x)
    target = torch.randn(4, 64)
    (emb * target).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        one = model.encode_image(x[2:3])
    assert torch.allclose(one, emb[2:3].detach(), atol=1e-5)
    # gradient of sample 0's embedding touches only sample 0
    x.grad = None
    model.encode_image(x)[0].sum().backward()
    assert x.grad[1:].abs().max() == 0 and x.grad[0].abs().max() > 0


def test_preprocessing_matches_pil_pipeline():
    """uint8 path = CLIP's Resize(bicubic) + CenterCrop + ToTensor + Normalize."""
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, size=(12, 9, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(base).resize((90, 120), Image.BILINEAR))  # smooth content
    r = 32
    ours = preprocess_images(arr, r)
    h, w = arr.shape[:2]
    nw, nh = r, int(r * h / w)
    pil = Image.fromarray(arr).resize((nw, nh), Image.BICUBIC)
    top = int(round((nh - r) / 2.0))
    ref = np.asarray(pil, dtype=np.float32)[top : top + r] / 255.0
    ref = (torch.from_numpy(ref).permute(2, 0, 1)[None] - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        CLIP_STD
    ).view(1, 3, 1, 1)
    assert ours.shape == (1, 3, r, r)
    assert (ours - ref).abs().max() * 0.27 < 3 / 255  # within a few 8-bit levels of PIL
    # downsampling (the usual case): PIL rounds to 8 bits between its two passes,
    # so compare on average
    big = rng.integers(0, 256, size=(150, 125, 3), dtype=np.uint8)
    ours_big = preprocess_images(big, r)
    nh = int(r * 150 / 125)
    top = int(round((nh - r) / 2.0))
    ref_big = np.asarray(Image.fromarray(big).resize((r, nh), Image.BICUBIC), dtype=np.float32)[top : top + r]
    ref_big = torch.from_numpy(ref_big / 255.0).permute(2, 0, 1)[None]
    err = (
        ours_big * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) - ref_big
    ).abs()
    assert err.mean() < 1 / 255
    # the [-1, 1] tensor path agrees with the uint8 path
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert (preprocess_images(t, r) - ours).abs().max() * 0.27 < 1.5 / 255


def test_preprocessing_input_kinds(tmp_path, model):
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    r = SMALL.image_resolution
    base = preprocess_images(rgb, r)
    assert torch.allclose(preprocess_images(Image.fromarray(rgb), r), base)
    assert torch.allclose(preprocess_images(torch.from_numpy(rgb), r), base)
    p = tmp_path / "x.png"
    Image.fromarray(rgb).save(p)
    assert torch.allclose(preprocess_images(str(p), r), base)
    rgba = np.concatenate([rgb, np.full((40, 30, 1), 255, np.uint8)], axis=-1)
    assert torch.allclose(preprocess_images(rgba, r), base)
    gray = rgb[..., 0]
    g = preprocess_images(gray, r)
    assert torch.allclose(preprocess_images(np.repeat(gray[..., None], 3, -1), r), g)
    assert torch.allclose(preprocess_images(gray.astype(np.uint16) * 257, r), g, atol=1e-5)
    mixed = preprocess_images([rgb, gray, torch.rand(3, 50, 70) * 2 - 1, rgb[None]], r)
    assert mixed.shape == (4, 3, r, r)
    with torch.no_grad():
        emb = model.encode_image([rgb, str(p), Image.fromarray(gray)])
    assert emb.shape == (3, 64)
    same = preprocess_images(torch.zeros(2, 3, r, r), r)  # already at size: no resampling
    assert torch.allclose(same[0, 0], torch.full((r, r), (0.5 - CLIP_MEAN[0]) / CLIP_STD[0]))


def test_preprocessing_bad_inputs(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError):
        preprocess_images(str(bad), 32)
    with pytest.raises(UserError, match="ambiguous"):
        preprocess_images(np.zeros((8, 8, 3), np.float32), 32)
    with pytest.raises(UserError):
        preprocess_images(np.zeros((8, 8, 5), np.uint8), 32)
    with pytest.raises(UserError):
        preprocess_images(torch.zeros(2, 5, 8, 8), 32)
    with pytest.raises(UserError):
        preprocess_images([], 32)
    with pytest.raises(UserError):
        preprocess_images(3.0, 32)


# --------------------------------------------------------------------------
# FaRL / OpenAI checkpoints
# --------------------------------------------------------------------------


def _farl_pth(model, path, prefix="", extra=None, dtype=None):
    """Write ``model`` as FaRL releases do: {'state_dict': CLIP keys, ...}."""
    sd = {prefix + k: (v.to(dtype) if dtype is not None else v).clone() for k, v in model.state_dict().items()}
    if extra:
        sd.update(extra)
    torch.save({"state_dict": sd, "epoch": 16, "config": {"arch": "ViT-B/16"}}, path)
    return path


def test_farl_checkpoint_loads_identically(tmp_path, model, images):
    w = model.config.vision_width
    mim = {  # FaRL pre-training's masked-image-modelling head: ignored
        "visual.mask_token": torch.zeros(w),
        "visual.ln_lm.weight": torch.ones(w),
        "visual.lm_head.weight": torch.zeros(8, w),
        "visual.lm_transformer.resblocks.0.ln_1.weight": torch.ones(w),
    }
    path = _farl_pth(model, tmp_path / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth", extra=mim)
    loaded = load_farl(path)
    assert loaded.config == SMALL and not loaded.training
    img0, txt0 = _embed(model, images)
    img1, txt1 = _embed(loaded, images)
    assert torch.equal(img0, img1) and torch.equal(txt0, txt1)


@pytest.mark.parametrize("prefix", ["module.", "clip.", "module.clip."])
def test_prefixed_and_half_precision_checkpoints(tmp_path, model, images, prefix):
    path = _farl_pth(model, tmp_path / "p.pth", prefix=prefix, dtype=torch.float16)
    loaded = load_farl(path)
    assert loaded.visual.conv1.weight.dtype == torch.float32
    img0, txt0 = _embed(model, images)
    img1, txt1 = _embed(loaded, images)
    assert torch.allclose(img0, img1, atol=3e-2) and torch.allclose(txt0, txt1, atol=3e-2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_openai_state_dict_and_torchscript_archive(tmp_path, model, images):
    sd = dict(model.state_dict())
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(sd, tmp_path / "plain.pt")
    img0, txt0 = _embed(model, images)
    img1, txt1 = _embed(load_farl(tmp_path / "plain.pt"), images)
    assert torch.equal(img0, img1) and torch.equal(txt0, txt1)

    class Holder(torch.nn.Module):  # OpenAI's released .pt files are TorchScript
        def __init__(self, m):
            super().__init__()
            for name, child in m.named_children():
                setattr(self, name, child)
            for name, p in m.named_parameters(recurse=False):
                setattr(self, name, p)

        def forward(self, x):
            return self.visual.conv1(x)

    torch.jit.trace(Holder(model), torch.zeros(1, 3, 32, 32)).save(str(tmp_path / "jit.pt"))
    img2, txt2 = _embed(load_farl(tmp_path / "jit.pt"), images)
    assert torch.equal(img0, img2) and torch.equal(txt0, txt2)


def test_missing_and_unexpected_keys_are_listed(tmp_path, model):
    sd = dict(model.state_dict())
    del sd["visual.ln_post.bias"]
    del sd["transformer.resblocks.1.mlp.c_fc.weight"]
    sd["text_head.weight"] = torch.zeros(3)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(UserError) as e:
        load_farl(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "missing 2 key(s)" in msg and "visual.ln_post.bias" in msg
    assert "transformer.resblocks.1.mlp.c_fc.weight" in msg
    assert "unexpected 1 key(s): text_head.weight" in msg and "\n" not in msg


def test_missing_logit_scale_gets_clip_default(tmp_path, model, images):
    sd = {k: v for k, v in model.state_dict().items() if k != "logit_scale"}
    torch.save({"state_dict": sd}, tmp_path / "nols.pth")
    loaded = load_farl(tmp_path / "nols.pth")
    assert abs(loaded.logit_scale.item() - np.log(1 / 0.07)) < 1e-6
    assert torch.equal(_embed(loaded, images)[1], _embed(model, images)[1])


def test_shape_mismatch_and_foreign_files(tmp_path, model):
    sd = dict(model.state_dict())
    sd["visual.ln_pre.weight"] = torch.ones(5)
    torch.save({"state_dict": sd}, tmp_path / "shape.pth")
    with pytest.raises(UserError, match="shape mismatch.*visual.ln_pre.weight"):
        load_farl(tmp_path / "shape.pth")
    visual_only = {k: v for k, v in model.state_dict().items() if k.startswith("visual.")}
    torch.save({"state_dict": visual_only}, tmp_path / "visual.pth")
    with pytest.raises(UserError, match="missing.*token_embedding.weight"):
        load_farl(tmp_path / "visual.pth")
    torch.save({"state_dict": {"conv.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a CLIP/FaRL ViT"):
        load_farl(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="corrupt"):
        load_farl(tmp_path / "junk.pth")
    with pytest.raises(UserError, match="not found"):
        load_farl(tmp_path / "absent.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"state_dict": {"visual.conv1.weight": _Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="refusing"):
        load_farl(tmp_path / "evil.pth")
    with open(tmp_path / "legacy.pth", "wb") as f:  # plain pickle, not torch's zip format
        pickle.dump({"state_dict": _Evil()}, f, protocol=2)
    with pytest.raises(UserError, match="refus"):
        load_farl(tmp_path / "legacy.pth")
    assert "must never run" not in capsys.readouterr().out


# --------------------------------------------------------------------------
# our format
# --------------------------------------------------------------------------


def test_convert_and_our_format_roundtrip(tmp_path, model, images):
    src = _farl_pth(model, tmp_path / "farl.pth")
    out = convert_farl(src, tmp_path / "out" / "farl")
    assert out.suffix == ".safetensors" and out.exists() and out.with_suffix(".json").exists()
    loaded = load_clip(out)
    img0, txt0 = _embed(model, images)
    img1, txt1 = _embed(loaded, images)
    assert torch.equal(img0, img1) and torch.equal(txt0, txt1)
    # non-64-multiple head counts survive our format (config is stored, not inferred)
    odd = CLIP(CLIPConfig(32, 16, 1, 48, 8, 16, 49408, 48, 3, 1)).eval()
    save_clip(odd, tmp_path / "odd.safetensors", meta={"note": "test"})
    back = load_clip(tmp_path / "odd")
    assert back.config == odd.config
    with torch.no_grad():
        assert torch.equal(back.encode_text(["x"]), odd.encode_text(["x"]))


def test_our_format_errors(tmp_path, model):
    from mm2latent.common.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "g", {"w": torch.zeros(1)}, {"kind": "stylegan2"})
    with pytest.raises(UserError, match="stylegan2"):
        load_clip(tmp_path / "g")
    cfg = {"kind": "clip", "format_version": 1, **SMALL.to_dict()}
    save_checkpoint(tmp_path / "h", {"logit_scale": torch.zeros(())}, cfg)
    with pytest.raises(UserError, match="missing"):
        load_clip(tmp_path / "h")
    with pytest.raises(UserError, match="is a directory"):
        convert_farl(tmp_path / "whatever.pth", tmp_path)
