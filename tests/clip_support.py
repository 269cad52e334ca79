"""Test helpers for the StyleCLIP tests (issue 33): a random-weight CLIP written from a seed with
numpy (the same numbers whatever transformers' initialisation does), a tiny vocabulary file, and
CLIP's real vocabulary read out of the open-clip-torch wheel (never imported)."""
from __future__ import annotations

import gzip
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "styleclip"
VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def random_clip(path: Path, *, vocab_size: int = 49408, seed: int = 0, width: int = 64, layers: int = 2,
                proj: int = 32, vision: bool = True) -> Path:
    """Write a random CLIP (transformers' CLIPModel layout, safetensors) of a tiny config."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                num_attention_heads=max(1, width // 64), max_position_embeddings=77, projection_dim=proj,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=0)
    vis = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1, num_attention_heads=max(1, width // 64),
               image_size=32, patch_size=8, projection_dim=proj)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vis, projection_dim=proj))
    rng = np.random.RandomState(seed)
    out = {}
    for key, t in sorted(model.state_dict().items()):
        if key.endswith("position_ids") or key == "logit_scale" or (not vision and key.startswith(("vision", "visual"))):
            continue
        if "norm" in key and key.endswith("weight"):
            v = 1 + 0.1 * rng.randn(*t.shape)
        else:
            v = 0.05 * rng.randn(*t.shape) if "embedding" not in key else 0.5 * rng.randn(*t.shape)
        out[key] = torch.from_numpy(v.astype(np.float32)).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    return path


def tiny_vocab(path: Path) -> Path:
    """A vocabulary file of CLIP's layout with a few merges: 512 byte tokens + 4 merges + 2 marks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("tiny vocabulary for tests\nf a\nc e</w>\nfa ce</w>\ng l\n")
    return path


def real_vocab(cache: Path | None = None) -> Path:
    """CLIP's vocabulary from the open-clip-torch wheel (pip download --no-deps, read from the
    zip, never installed or imported), cached under .cache/; skips the test when unavailable."""
    cache = cache or ROOT / ".cache" / "clip"
    target = cache / VOCAB_NAME
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = list(cache.glob("open_clip_torch-*.whl"))
    if not wheels:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "open-clip-torch==3.3.0",
                            "-d", str(cache)], check=True, capture_output=True, timeout=180)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"CLIP's vocabulary is not available: downloading the open-clip-torch wheel failed ({exc})")
        wheels = list(cache.glob("open_clip_torch-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        data = z.read("open_clip/" + VOCAB_NAME)
    import hashlib

    assert hashlib.sha256(data).hexdigest() == VOCAB_SHA256
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target
