"""CLIP for text edits (StyleCLIP, issue 33): the byte-level BPE tokenizer of OpenAI's CLIP and
the CLIP model through Hugging Face `transformers`, loaded from a safetensors file.

The tokenizer is written from CLIP's published scheme: text cleaned (HTML entities, Unicode NFC,
typographic quotes and ligatures folded, whitespace collapsed) and lower-cased, split into words,
numbers (one digit each) and runs of other symbols, each piece byte-encoded and merged by the
ranks in `bpe_simple_vocab_16e6.txt.gz` (49,408 tokens: 256 bytes, the same with an end-of-word
mark, 48,894 merges, start and end of text). A text becomes [start, tokens..., end], zero-padded
to 77 ids. The model's config is read off the tensors' shapes, so any CLIP of this layout
(ViT-B/32, or a tiny random one in the tests) loads the same way.
"""
from __future__ import annotations

import gzip
import html
import os
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import torch

from .errors import E4EError

CONTEXT_LENGTH = 77
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_MERGE_LINES = 49152 - 256 - 2  # merges CLIP uses from its vocabulary file (the rest are unused)
_QUOTES = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
           "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"'}
_LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st",
              "\ufb06": "st", "\u0132": "IJ", "\u0133": "ij", "\u01c7": "LJ", "\u01c8": "Lj", "\u01c9": "lj",
              "\u01ca": "NJ", "\u01cb": "Nj", "\u01cc": "nj"}
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


def _byte_alphabet() -> dict[int, str]:
    """Each byte -> a printable character (printable Latin-1 bytes map to themselves, the others
    to code points from 256 on, in byte order): GPT-2's reversible byte encoding. The dict's
    order is the vocabulary's: the printable bytes first, then the others."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    table = {b: chr(b) for b in keep}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + k) for k, b in enumerate(others)})
    return table


def clean_text(text: str) -> str:
    """CLIP's text cleaning for well-formed text: HTML entities decoded, NFC, typographic quotes,
    ligatures and full-width forms folded, control characters dropped, whitespace collapsed,
    lower case. (The reference runs ftfy; mojibake repair is the part left out.)"""
    text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFC", text)
    out = []
    for ch in text:
        ch = _QUOTES.get(ch, _LIGATURES.get(ch, ch))
        if len(ch) == 1 and 0xFF01 <= ord(ch) <= 0xFF5E:  # full-width ASCII forms
            ch = chr(ord(ch) - 0xFEE0)
        elif len(ch) == 1 and unicodedata.category(ch) == "Cc" and ch not in "\t\n\r":
            continue
        out.append(ch)
    return re.sub(r"\s+", " ", "".join(out)).strip().lower()


def _kind(ch: str) -> str:
    if ch.isspace():
        return "space"
    cat = unicodedata.category(ch)
    return "letter" if cat[0] == "L" else "number" if cat[0] == "N" else "other"


def split_words(text: str) -> list[str]:
    """Pieces as CLIP's pattern finds them: the special tokens, contractions ('s 't 're 've 'm
    'll 'd), runs of letters, single numeric characters, runs of other non-space symbols."""
    pieces, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        special = next((t for t in (SOT, EOT) if text.startswith(t, i)), None)
        if special:
            pieces.append(special)
            i += len(special)
            continue
        if ch == "'":
            c = next((c for c in _CONTRACTIONS if text.startswith(c, i + 1)), None)
            if c:
                pieces.append("'" + c)
                i += 1 + len(c)
                continue
        kind = _kind(ch)
        if kind == "space":
            i += 1
            continue
        j = i + 1
        if kind != "number":
            while j < n and _kind(text[j]) == kind:
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


class Tokenizer:
    """CLIP's BPE tokenizer from its vocabulary file (`bpe_simple_vocab_16e6.txt.gz`, or any file
    of that layout: a header line, then one merge `a b` per line)."""

    def __init__(self, vocab_path: str | os.PathLike):
        try:
            lines = gzip.open(vocab_path, "rt", encoding="utf-8").read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise E4EError(f"cannot read CLIP's vocabulary {vocab_path}: {exc}") from None
        merges = [tuple(line.split()) for line in lines[1 : _MERGE_LINES + 1] if line.strip()]
        self.bytes = _byte_alphabet()
        alphabet = list(self.bytes.values())
        vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges] + [SOT, EOT]
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: r for r, m in enumerate(merges)}
        self.sot, self.eot = self.ids[SOT], self.ids[EOT]
        self.vocab_size = len(vocab)
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    def _bpe(self, piece: str) -> list[str]:
        if piece in self._cache:
            return self._cache[piece]
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[k], word[k + 1]) for k in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, k = [], 0
            while k < len(word):
                if k < len(word) - 1 and (word[k], word[k + 1]) == best:
                    merged.append(word[k] + word[k + 1])
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Text -> token ids without the start and end marks."""
        out = []
        for piece in split_words(clean_text(text)):
            encoded = "".join(self.bytes[b] for b in piece.encode("utf-8"))
            out.extend(self.ids[t] for t in self._bpe(encoded))
        return out

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Texts -> ids [N,77] (start, tokens, end, zeros). Empty texts and texts longer than
        CLIP's context raise E4EError."""
        rows = torch.zeros(len(texts), CONTEXT_LENGTH, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            if not ids:
                raise E4EError(f"the text {text!r} is empty: type what the edit should show")
            ids = [self.sot, *ids, self.eot]
            if len(ids) > CONTEXT_LENGTH:
                raise E4EError(f"the text {_short(text)!r} is {len(ids)} tokens long; CLIP reads at most "
                               f"{CONTEXT_LENGTH} (start and end marks included): shorten it")
            rows[i, : len(ids)] = torch.tensor(ids)
        return rows


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


@lru_cache(maxsize=4)
def load_tokenizer(vocab_path: str) -> Tokenizer:
    return Tokenizer(vocab_path)


# --------------------------------------------------------------------------------------
# The model


def _count(keys, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return 1 + max(int(m.group(1)) for k in keys for m in [pat.match(k)] if m)


def config_from_tensors(tensors: dict) -> "object":
    """A transformers CLIPConfig read off the weights' shapes (attention heads: width / 64, as
    every OpenAI CLIP)."""
    from transformers import CLIPConfig

    keys = list(tensors)
    tok = tensors["text_model.embeddings.token_embedding.weight"]
    width = tok.shape[1]
    text = dict(vocab_size=tok.shape[0], hidden_size=width,
                intermediate_size=tensors["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                num_hidden_layers=_count(keys, "text_model.encoder.layers."),
                num_attention_heads=max(1, width // 64),
                max_position_embeddings=tensors["text_model.embeddings.position_embedding.weight"].shape[0],
                projection_dim=tensors["text_projection.weight"].shape[0],
                # CLIP's layout: start and end of text are the last two ids; the end's position is pooled
                bos_token_id=tok.shape[0] - 2, eos_token_id=tok.shape[0] - 1, pad_token_id=0)
    vision = None
    if "vision_model.embeddings.patch_embedding.weight" in tensors:
        patch = tensors["vision_model.embeddings.patch_embedding.weight"]
        vwidth = patch.shape[0]
        grid = int(round((tensors["vision_model.embeddings.position_embedding.weight"].shape[0] - 1) ** 0.5))
        vision = dict(hidden_size=vwidth, patch_size=patch.shape[-1], image_size=grid * patch.shape[-1],
                      intermediate_size=tensors["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                      num_hidden_layers=_count(keys, "vision_model.encoder.layers."),
                      num_attention_heads=max(1, vwidth // 64),
                      projection_dim=tensors["visual_projection.weight"].shape[0])
    return CLIPConfig(text_config=text, vision_config=vision or {}, projection_dim=text["projection_dim"])


class Clip:
    """CLIP (transformers' CLIPModel) with our tokenizer: `text_features(texts)` [N,D] and
    `image_features(images [B,3,H,W] in [-1,1])` [B,D], both unnormalised as CLIP's encoders give them."""

    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, model, tokenizer: Tokenizer, device: torch.device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.image_size = model.config.vision_config.image_size

    @torch.inference_mode()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """texts -> [N,D]. The ids are cut after the longest text's end mark: attention is causal
        and positions absolute, so the end's output is the same, for a fraction of the work."""
        ids = self.tokenizer(list(texts))
        length = int((ids == self.tokenizer.eot).int().argmax(dim=1).max()) + 1
        ids = ids[:, :length].to(self.device)
        out = self.model.text_model(input_ids=ids)
        return self.model.text_projection(out.pooler_output).float()

    @torch.inference_mode()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [-1,1] -> [B,D]: resized (bicubic) to CLIP's input, centre-cropped
        to a square, normalised with CLIP's mean and std."""
        x = (images.float().clamp(-1, 1) + 1) / 2
        h, w = x.shape[-2:]
        side = min(h, w)
        x = x[..., (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
        x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                                            align_corners=False, antialias=True)
        mean = torch.tensor(self.MEAN, device=x.device)[:, None, None]
        std = torch.tensor(self.STD, device=x.device)[:, None, None]
        out = self.model.vision_model(pixel_values=((x - mean) / std).to(self.device))
        return self.model.visual_projection(out.pooler_output).float()


def load_clip(weights: str | os.PathLike, vocab: str | os.PathLike, *, device="cpu") -> Clip:
    """CLIP from a safetensors file of transformers' `CLIPModel` layout (openai/clip-vit-base-patch32's
    `model.safetensors`) and CLIP's vocabulary file."""
    from safetensors.torch import load_file
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its notes are not ours to print; failures raise

    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # a truncated or foreign file
        raise E4EError(f"cannot read the CLIP weights {weights}: {exc}") from None
    try:
        config = config_from_tensors(tensors)
    except (KeyError, ValueError) as exc:
        raise E4EError(f"{weights} is not a CLIP model in transformers' layout (missing {exc})") from None
    tok = load_tokenizer(str(Path(vocab)))
    if config.text_config.vocab_size != tok.vocab_size:
        raise E4EError(f"the CLIP weights {weights} have {config.text_config.vocab_size} tokens but the vocabulary "
                       f"{vocab} has {tok.vocab_size}")
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids") and k != "logit_scale"]
    if missing:
        raise E4EError(f"the CLIP weights {weights} lack {len(missing)} tensors (e.g. {missing[0]})")
    return Clip(model.eval().to(device), tok, torch.device(device))
