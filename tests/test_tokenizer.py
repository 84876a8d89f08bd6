"""CLIP BPE tokenizer: known ids, agreement with OpenAI's reference, edge cases."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mm2latent.common.errors import UserError
from mm2latent.models import tokenizer as tk
from mm2latent.models.tokenizer import EOT_ID, SOT_ID, get_tokenizer, tokenize


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


# ids published with OpenAI CLIP's tokenizer (clip.tokenize outputs)
KNOWN = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "a painting of a cat": [320, 3086, 539, 320, 2368],
    "bozuman": [647, 4091, 786],
    "n kabrie": [333, 6554, 5322],
}


@pytest.mark.parametrize("text,ids", list(KNOWN.items()))
def test_known_tokenisations(tok, text, ids):
    assert tok.encode(text) == ids
    row = tokenize(text)
    assert row.shape == (1, 77) and row.dtype == torch.long
    expect = [SOT_ID] + ids + [EOT_ID]
    assert row[0, : len(expect)].tolist() == expect
    assert row[0, len(expect) :].eq(0).all()


def test_vocab_and_specials(tok):
    assert tok.vocab_size == 49408
    assert (tok.sot_token_id, tok.eot_token_id) == (49406, 49407)
    assert tok.encode("<|startoftext|>") == [49406]
    assert tok.decode(tok.encode("a photo of a cat")) == "a photo of a cat"


def test_lower_casing_and_whitespace(tok):
    assert tok.encode("A PHOTO Of a CaT") == KNOWN["a photo of a cat"]
    assert tok.encode("  a\tphoto \n\n of   a cat  ") == KNOWN["a photo of a cat"]


def test_html_and_mojibake_cleaning(tok):
    assert tok.encode("cat &amp; dog") == tok.encode("cat & dog")
    assert tok.encode("caf\u00c3\u00a9") == tok.encode("caf\u00e9")  # ftfy repairs the mojibake


def test_empty_and_blank(tok):
    for text in ("", "   ", "\n\t"):
        row = tok.tokenize(text)
        assert row[0, :2].tolist() == [SOT_ID, EOT_ID]
        assert row[0, 2:].eq(0).all()


def test_emoji_and_non_ascii(tok):
    for text in (
        "\U0001f600 smiling",
        "\u4e2d\u6587\u5b57",
        "na\u00efve d\u00e9j\u00e0 vu",
        "\U0001f469\u200d\U0001f3a4",
    ):
        ids = tok.encode(text)
        assert ids and all(0 <= i < 49406 for i in ids)
        assert tok.decode(ids) == tk.clean_text(text).replace("  ", " ")


def test_truncation_keeps_eot_and_warns(tok):
    text = " ".join(["smiling woman with blond hair"] * 40)
    with pytest.warns(UserWarning, match="truncated"):
        row = tok.tokenize([text, "a cat"])
    assert row.shape == (2, 77)
    assert row[0, 0] == SOT_ID and row[0, -1] == EOT_ID
    assert row[0, 1:-1].ne(EOT_ID).all() and row[0].ne(0).all()
    assert row[0, 1:-1].tolist() == tok.encode(text)[:75]
    assert row[1, :7].tolist() == [SOT_ID, 320, 2368, EOT_ID, 0, 0, 0]
    with pytest.raises(UserError, match="context length"):
        tok.tokenize(text, truncate=False)
    short = tok.tokenize("a photo of a cat", context_length=4, warn=False)
    assert short[0].tolist() == [SOT_ID, 320, 1125, EOT_ID]


def test_no_warning_when_it_fits(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.tokenize(["a cat"] * 3)


def test_bad_input(tok):
    with pytest.raises(UserError):
        tok.encode(123)  # type: ignore[arg-type]
    with pytest.raises(UserError):
        tok.tokenize("x", context_length=1)


def test_missing_merges_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(tk.BPE_ENV, str(tmp_path / "nope.txt.gz"))
    with pytest.raises(UserError, match=tk.BPE_ENV):
        tk.find_bpe_path()
    monkeypatch.delenv(tk.BPE_ENV)
    monkeypatch.setattr(tk, "bpe_candidates", lambda: [tmp_path / "absent.gz"])
    with pytest.raises(UserError, match="ships it"):
        tk.find_bpe_path()


def test_env_override_and_corrupt_file(monkeypatch, tmp_path):
    real = tk.find_bpe_path()
    monkeypatch.setenv(tk.BPE_ENV, str(real))
    assert tk.find_bpe_path() == real
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(UserError, match="cannot read"):
        tk.CLIPTokenizer(bad)


def test_clip_package_is_not_imported():
    get_tokenizer()
    assert "clip" not in sys.modules  # importing it would need torchvision


def _reference_tokenizer():
    """OpenAI's simple_tokenizer.py from the clip-anytorch wheel, loaded by path.

    Loading the file alone (not the ``clip`` package) avoids torchvision.
    """
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "simple_tokenizer.py"
    if not path.is_file():
        return None
    mspec = importlib.util.spec_from_file_location("_reference_clip_simple_tokenizer", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod.SimpleTokenizer()


CORPUS = [
    "a photo of a cat",
    "This man looks young and has black hair, mustache. He wears necktie.",
    "A smiling lady with blond hair and NO glasses!!",
    "gentleman, spectacles; not smiling...",
    "it's the man's hat, isn't it? I'll say we'd've",
    "12345 3.14159 x2 4th 1990s",
    "\U0001f600 emoji \U0001f469\u200d\U0001f3a4 test \u2764\ufe0f",
    "\u4e2d\u6587\u5b57\u7b26 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4 \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "na\u00efve caf\u00e9 d\u00e9j\u00e0 vu \u00fcber stra\u00dfe",
    "&lt;b&gt;bold&lt;/b&gt; &amp;amp;",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "tabs\tand\nnewlines\r\n  and   spaces",
    "<|endoftext|> after the end",
    "---=== ~~~ ___ @@@ ### $$$",
    "",
]


def test_agrees_with_openai_reference(tok):
    ref = _reference_tokenizer()
    if ref is None:
        pytest.skip("clip-anytorch (the merges file source) is not installed")
    for text in CORPUS:
        assert tok.encode(text) == ref.encode(text), text
    # clip.tokenize(truncate=True): first 77 ids, last one replaced by EOT
    long = " ".join(CORPUS) * 3
    ids = [ref.encoder["<|startoftext|>"]] + ref.encode(long) + [ref.encoder["<|endoftext|>"]]
    ids = ids[:77]
    ids[-1] = EOT_ID
    with pytest.warns(UserWarning):
        assert tok.tokenize(long)[0].tolist() == ids


def test_the_package_ships_the_merges_file(monkeypatch):
    """A plain ``pip install`` (no clip-anytorch) must tokenize: the packaged copy is enough."""
    monkeypatch.delenv(tk.BPE_ENV, raising=False)
    packaged = Path(tk.__file__).resolve().parent.parent / "assets" / tk.BPE_FILENAME
    assert packaged.is_file()
    monkeypatch.setattr(tk, "bpe_candidates", lambda: [packaged])
    assert tk.find_bpe_path() == packaged
    assert tk.CLIPTokenizer().encode("a smiling woman") == tk.CLIPTokenizer(packaged).encode("a smiling woman")
