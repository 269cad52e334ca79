"""The StyleGAN2 domains e4e was released for: every fact about a domain, in one table.

A domain fixes the generator's output size (and so the number of style vectors), the encoder's
input shape, the crop applied to decoded images (cars: the 3/4-height band of the square
output, as the reference), which asset holds its e4e checkpoint and its GANSpace PCA file,
the reference's `dataset_type` name, and the identity network its training uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .errors import E4EError


@dataclass(frozen=True)
class Domain:
    name: str
    size: int  # generator output side (px)
    checkpoint_asset: Optional[str]  # registry name of the released e4e checkpoint (None: no e4e release)
    dataset_type: str  # the reference's name (opts["dataset_type"] in checkpoints)
    identity_loss: str  # "arcface" (faces) or "moco" (anything else)
    aligned_faces: bool = False  # inputs are face photos aligned with dlib's landmarks
    wide: bool = False  # 4:3 images: decoded rows cropped to the middle 3/4, encoder input 3/4 high
    pca_asset: Optional[str] = None  # GANSpace components (registry name), where released
    refiner_asset: Optional[str] = None  # HyperStyle checkpoint (registry name), where released
    w_encoder_asset: Optional[str] = None  # the W-encoder HyperStyle starts from
    refiner_dataset_type: Optional[str] = None  # HyperStyle's dataset_type for this domain

    @property
    def n_styles(self) -> int:
        return n_styles_for(self.size)

    def image_hw(self, side: Optional[int] = None) -> Tuple[int, int]:
        """(height, width) of an image of this domain whose width is `side` (default: the output)."""
        s = self.size if side is None else int(side)
        return (s * 3 // 4, s) if self.wide else (s, s)

    def crop_rows(self, side: Optional[int] = None) -> Tuple[int, int]:
        """Rows [top, bottom) of the square generator output kept after the crop (cars 512: 64..448)."""
        s = self.size if side is None else int(side)
        h = self.image_hw(s)[0]
        top = (s - h) // 2
        return top, top + h


DOMAINS: Dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("ffhq", 1024, "ffhq", "ffhq_encode", "arcface", aligned_faces=True, pca_asset="ffhq_pca",
               refiner_asset="hyperstyle_ffhq", w_encoder_asset="w_encoder_ffhq", refiner_dataset_type="ffhq_hypernet"),
        Domain("cars", 512, "cars", "cars_encode", "moco", wide=True, pca_asset="cars_pca",
               refiner_asset="hyperstyle_cars", w_encoder_asset="w_encoder_cars", refiner_dataset_type="cars_hypernet"),
        Domain("horse", 256, "horse", "horse_encode", "moco"),
        Domain("church", 256, "church", "church_encode", "moco"),
        # AFHQ wild animals (StyleGAN2-ADA, 512): HyperStyle and its W-encoder exist, e4e does not
        Domain("wild", 512, None, "afhq_wild_encode", "moco",
               refiner_asset="hyperstyle_wild", w_encoder_asset="w_encoder_wild", refiner_dataset_type="afhq_wild_hypernet"),
    )
}

NAMES: Tuple[str, ...] = tuple(DOMAINS)
DEFAULT = "ffhq"


def n_styles_for(size: int) -> int:
    """Style vectors of a generator with output side `size`: 2*log2(size) - 2 (18 at 1024)."""
    return 2 * int(math.log2(size)) - 2


def get(name: str) -> Domain:
    """The domain called `name`, or one E4EError listing the known ones."""
    try:
        return DOMAINS[name]
    except KeyError:
        raise E4EError(f"unknown domain {name!r}: choose from {', '.join(NAMES)}") from None


def from_dataset_type(dataset_type: str) -> Optional[Domain]:
    """`ffhq_encode` -> ffhq (None for an unknown or empty name)."""
    for d in DOMAINS.values():
        if dataset_type in (d.dataset_type, d.refiner_dataset_type):
            return d
    return DOMAINS.get(str(dataset_type or "").split("_")[0])


#: which domain a bare size or style count means when two share it (horse and church are both 256)
GUESS_ORDER: Tuple[str, ...] = ("ffhq", "cars", "church", "horse")


def guess_from_size(size: int) -> str:
    """The released domain of a generator of this size when nothing else says (256, or unknown: church)."""
    return next((n for n in GUESS_ORDER if DOMAINS[n].size == int(size)), "church")


def guess_from_n_styles(n_styles: int) -> Optional[str]:
    """A latent's domain from its number of style vectors (18 ffhq, 16 cars, 14 church)."""
    return next((n for n in GUESS_ORDER if DOMAINS[n].n_styles == int(n_styles)), None)


def aligns_faces(name: str) -> bool:
    """Whether photos of this domain are face-aligned before encoding (False for unknown names)."""
    d = DOMAINS.get(name)
    return bool(d and d.aligned_faces)


def image_hw(name: str, side: int) -> Tuple[int, int]:
    """(height, width) of an image `side` wide in domain `name` (square for unknown names)."""
    d = DOMAINS.get(name)
    return d.image_hw(side) if d else (int(side), int(side))


def crop_rows(name: str, side: int) -> Tuple[int, int]:
    """Rows [top, bottom) kept of a square `side` image in domain `name` (all rows for unknown names)."""
    d = DOMAINS.get(name)
    return d.crop_rows(side) if d else (0, int(side))


def partial_rows(name: str, side: int) -> Optional[Tuple[int, int]]:
    """`crop_rows`, or None where every row is kept: the slice a loss takes of the decode
    (`img[:, :, top:bottom, :]`) only where there is one (cars)."""
    top, bottom = crop_rows(name, side)
    return None if (top, bottom) == (0, int(side)) else (top, bottom)


def identity_loss(name: str) -> str:
    """The identity network training uses: "arcface" for faces, "moco" for anything else."""
    d = DOMAINS.get(name)
    return d.identity_loss if d else "moco"
