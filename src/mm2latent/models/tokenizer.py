"""CLIP's byte-level BPE tokenizer (the one FaRL uses), written for this package.

Behaviour matches OpenAI CLIP's ``simple_tokenizer`` + ``clip.tokenize``:

* text is fixed with ``ftfy``, HTML-unescaped twice, whitespace runs collapsed
  and stripped, then lower-cased;
* it is split with CLIP's pre-tokenisation pattern (specials, English
  contractions, letter runs, single digits, runs of other non-space symbols);
* each piece is turned into bytes, the bytes into GPT-2's printable byte
  alphabet, the last symbol gets the ``</w>`` end-of-word marker, and the
  49,152-line merges file is applied by rank;
* a sequence is ``<|startoftext|>`` (49406) + tokens + ``<|endoftext|>``
  (49407), zero-padded to the context length (77). Too long sequences are cut
  to the context length with the end token kept last, and a warning is given.

Like CLIP, the literal strings ``<|startoftext|>`` and ``<|endoftext|>`` in the
input are read as the special tokens.

The merges file (``bpe_simple_vocab_16e6.txt.gz``, CLIP's published vocabulary,
MIT licence) ships inside the package, so a plain ``pip install`` tokenizes
offline. It is found, in order, at

1. the path in the ``MM2LATENT_CLIP_BPE`` environment variable;
2. ``mm2latent/assets/bpe_simple_vocab_16e6.txt.gz`` (shipped with the package);
3. inside the ``clip-anytorch`` distribution (installed with
   ``pip install --no-deps clip-anytorch==2.6.0``; ``--no-deps`` because its
   requirements would pull torchvision), located with
   :func:`importlib.util.find_spec` and never imported (importing ``clip``
   needs torchvision);
4. inside an ``open_clip_torch`` installation, if one is present.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ..common.errors import UserError

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_ENV = "MM2LATENT_CLIP_BPE"
#: exact command that installs the merges file (used in error messages)
BPE_INSTALL_HINT = "pip install --force-reinstall mm2latent (the package ships it)"

VOCAB_SIZE = 49408
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
SOT_ID = 49406
EOT_ID = 49407
CONTEXT_LENGTH = 77
#: number of merge lines CLIP uses (after the version header line)
N_MERGES = 49152 - 256 - 2

_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


def _import_regex():
    try:
        import regex
    except ImportError:  # pragma: no cover - dependency missing
        raise UserError("the CLIP tokenizer needs the 'regex' package: pip install regex") from None
    return regex


def _import_ftfy():
    try:
        import ftfy
    except ImportError:  # pragma: no cover - dependency missing
        raise UserError("the CLIP tokenizer needs the 'ftfy' package: pip install ftfy") from None
    return ftfy


# --------------------------------------------------------------------------
# locating the merges file
# --------------------------------------------------------------------------


def _spec_dirs(module_name: str) -> list[Path]:
    """Directories of a top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not dirs and spec.origin:
        dirs = [Path(spec.origin).parent]
    return dirs


def bpe_candidates() -> list[Path]:
    """Every place the merges file is looked for, in order."""
    out: list[Path] = []
    env = os.environ.get(BPE_ENV)
    if env:
        out.append(Path(env))
    out.append(Path(__file__).resolve().parent.parent / "assets" / BPE_FILENAME)
    for mod in ("clip", "open_clip"):
        out.extend(d / BPE_FILENAME for d in _spec_dirs(mod))
    return out


def find_bpe_path() -> Path:
    """Path of CLIP's merges file, or a UserError saying how to install it."""
    env = os.environ.get(BPE_ENV)
    if env and not Path(env).is_file():
        raise UserError(f"{BPE_ENV}={env} does not name a file")
    for p in bpe_candidates():
        if p.is_file():
            return p
    raise UserError(
        f"CLIP's BPE merges file ({BPE_FILENAME}) was not found; install it with "
        f"'{BPE_INSTALL_HINT}' or set {BPE_ENV} to its path"
    )


# --------------------------------------------------------------------------
# text cleaning and the byte alphabet
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2/CLIP mapping of the 256 byte values to printable characters.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls,
    space, DEL, NBSP, soft hyphen) are moved to code points 256, 257, ... in
    byte order, so that no token contains whitespace or control characters.
    """
    keep = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    keep_set = set(keep)
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in keep_set:
            table[b] = chr(256 + shifted)
            shifted += 1
    # the vocabulary lists the kept bytes first, then the moved ones
    return {b: table[b] for b in keep + [b for b in range(256) if b not in keep_set]}


def clean_text(text: str) -> str:
    """CLIP's cleaning: ftfy fix, double HTML unescape, whitespace, lower case."""
    ftfy = _import_ftfy()
    regex = _import_regex()
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = regex.sub(r"\s+", " ", text).strip()
    return text.lower()


def _pairs(word: Sequence[str]) -> set[tuple[str, str]]:
    return {(word[i], word[i + 1]) for i in range(len(word) - 1)}


class CLIPTokenizer:
    """CLIP byte-level BPE. ``tok(texts)`` gives a (B, context_length) LongTensor."""

    def __init__(self, bpe_path: str | os.PathLike | None = None):
        path = Path(bpe_path) if bpe_path is not None else find_bpe_path()
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read CLIP's BPE merges file {path}: {e}") from None
        merges = []
        for line in lines[1 : N_MERGES + 1]:
            parts = line.split()
            if len(parts) != 2:
                raise UserError(f"CLIP's BPE merges file {path} is malformed near {line!r}")
            merges.append((parts[0], parts[1]))
        if len(merges) != N_MERGES:
            raise UserError(f"CLIP's BPE merges file {path} has {len(merges)} merges, expected {N_MERGES}")
        self.bpe_path = path
        self.byte_encoder = byte_alphabet()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges] + [SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        if len(self.encoder) != VOCAB_SIZE:
            raise UserError(f"CLIP's BPE merges file {path} gives {len(self.encoder)} tokens, expected {VOCAB_SIZE}")
        self.decoder: dict[int, str] = {i: tok for tok, i in self.encoder.items()}
        self.ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self._cache: dict[str, tuple[str, ...]] = {SOT_TOKEN: (SOT_TOKEN,), EOT_TOKEN: (EOT_TOKEN,)}
        self._regex = _import_regex()
        self._pattern = self._regex.compile(_PATTERN, self._regex.IGNORECASE)
        self.sot_token_id = SOT_ID
        self.eot_token_id = EOT_ID
        assert self.encoder[SOT_TOKEN] == SOT_ID and self.encoder[EOT_TOKEN] == EOT_ID

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    # -- BPE ---------------------------------------------------------------
    def _bpe(self, piece: str) -> tuple[str, ...]:
        """Merge the symbols of one pre-token (already in the byte alphabet)."""
        hit = self._cache.get(piece)
        if hit is not None:
            return hit
        word: tuple[str, ...] = tuple(piece[:-1]) + (piece[-1] + "</w>",)
        inf = len(self.ranks) + 1
        while len(word) > 1:
            pairs = _pairs(word)
            best = min(pairs, key=lambda p: self.ranks.get(p, inf))
            if best not in self.ranks:
                break
            a, b = best
            merged: list[str] = []
            i = 0
            n = len(word)
            while i < n:
                if i < n - 1 and word[i] == a and word[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        if len(self._cache) < 200_000:
            self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens."""
        if not isinstance(text, str):
            raise UserError(f"text must be a string, got {type(text).__name__}")
        ids: list[int] = []
        for piece in self._pattern.findall(clean_text(text)):
            if piece in (SOT_TOKEN, EOT_TOKEN):
                ids.append(self.encoder[piece])
                continue
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self._bpe(mapped))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Inverse of :meth:`encode` up to cleaning (start/end/pad ids dropped)."""
        parts = []
        for i in ids:
            i = int(i)
            if i in (SOT_ID, EOT_ID):
                continue
            parts.append(self.decoder[i])
        out = bytearray()
        for tok in parts:
            word_end = tok.endswith("</w>")
            body = tok[:-4] if word_end else tok
            out.extend(self.byte_decoder[c] for c in body)
            if word_end:
                out.extend(b" ")
        return out.decode("utf-8", errors="replace").strip()

    # -- batches -------------------------------------------------------------
    def __call__(
        self,
        texts: str | Sequence[str],
        context_length: int = CONTEXT_LENGTH,
        truncate: bool = True,
        warn: bool = True,
    ) -> torch.Tensor:
        return self.tokenize(texts, context_length=context_length, truncate=truncate, warn=warn)

    def tokenize(
        self,
        texts: str | Sequence[str],
        context_length: int = CONTEXT_LENGTH,
        truncate: bool = True,
        warn: bool = True,
    ) -> torch.Tensor:
        """(B, context_length) int64 token ids, zero padded, EOT last when cut.

        ``truncate=False`` turns too long text into a UserError instead.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if context_length < 2:
            raise UserError(f"context length must be at least 2, got {context_length}")
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        cut = []
        for row, text in enumerate(texts):
            ids = [SOT_ID] + self.encode(text) + [EOT_ID]
            if len(ids) > context_length:
                if not truncate:
                    raise UserError(
                        f"text {row} is {len(ids)} tokens long, more than the context length {context_length}"
                    )
                ids = ids[:context_length]
                ids[-1] = EOT_ID
                cut.append(row)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if cut and warn:
            warnings.warn(
                f"{len(cut)} text(s) longer than {context_length} tokens were truncated (rows {cut[:10]})",
                stacklevel=3,
            )
        return out


@functools.lru_cache(maxsize=4)
def _cached(path: str | None) -> CLIPTokenizer:
    return CLIPTokenizer(path)


def get_tokenizer(bpe_path: str | os.PathLike | None = None) -> CLIPTokenizer:
    """A shared tokenizer instance (building one reads a 1.3 MB file)."""
    return _cached(str(bpe_path) if bpe_path is not None else str(find_bpe_path()))


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = True) -> torch.Tensor:
    """Like ``clip.tokenize(texts, context_length, truncate=True)``, with a warning on cuts."""
    return get_tokenizer().tokenize(texts, context_length=context_length, truncate=truncate)
