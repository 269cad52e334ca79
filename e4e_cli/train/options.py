"""The settings of an `e4e train` run, with the reference recipe's values as defaults.

Saved into every checkpoint's `opts` (plain values only), next to the released layout's keys
(`encoder_type`, `dataset_type`, `stylegan_size`, `start_from_latent_avg`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from ..domains import DOMAINS, identity_loss

#: domain -> the reference's dataset type (which picks the identity network and the crops)
DATASET_TYPES = {d.name: d.dataset_type for d in DOMAINS.values()}


@dataclass
class TrainOptions:
    # data and generator
    images: str = ""
    generator: str = ""
    out: str = ""
    # the released names (DATASET_TYPES); "" = not chosen: the face recipe, with a warning when the
    # generator looks like another domain's (the trainer records the one it uses)
    dataset_type: str = ""
    val_fraction: float = 0.05  # held-out share of the images (by a hash of the file name)
    flip: bool = True  # random horizontal flip of training images
    # recipe (the reference's defaults)
    batch_size: int = 8  # global batch; split over torchrun processes
    lr: float = 1e-4  # Ranger
    l2_lambda: float = 1.0
    lpips_lambda: float = 0.8
    id_lambda: Optional[float] = None  # None: 0.1 for faces, 0.5 otherwise
    delta_norm_lambda: float = 2e-4
    delta_norm: int = 2  # the p of the delta penalty's norm
    w_discriminator_lambda: float = 0.1
    w_discriminator_lr: float = 2e-5
    r1: float = 10.0
    d_reg_every: int = 16
    w_pool_size: int = 50
    progressive_start: int = 20000
    progressive_step_every: int = 2000
    loss_size: int = 256  # losses on images pooled to this size (cars: the 192-row crop of it)
    # run length and outputs
    max_steps: Optional[int] = 500000  # None on --resume: the run's own target
    save_every: int = 5000
    keep_last: int = 3
    image_every: int = 1000
    val_every: int = 5000
    val_images: int = 64
    log_every: int = 50
    seed: int = 0
    precision: str = "fp32"  # autocast: fp32, bf16, fp16 (fp16 only on CUDA)
    device: str = "auto"
    workers: int = 2
    # architecture (defaults: the released encoder; smaller ones for tests and experiments)
    encoder_widths: tuple = (64, 128, 256, 512)
    encoder_units: tuple = (3, 4, 14, 3)
    input_size: int = 256
    irse50_init: bool = True  # start the backbone from the face-recognition IR-SE50 (required unless False)
    weights_dir: Optional[str] = None
    extra: dict = field(default_factory=dict)

    @property
    def domain(self) -> str:
        """ffhq, cars, horse or church ("" counts as ffhq, the default recipe)."""
        return {v: k for k, v in DATASET_TYPES.items()}.get(self.dataset_type or "ffhq_encode",
                                                            self.dataset_type.split("_")[0])

    def id_weight(self) -> float:
        if self.id_lambda is not None:
            return float(self.id_lambda)
        return 0.1 if identity_loss(self.domain) == "arcface" else 0.5

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["encoder_widths"], d["encoder_units"] = list(self.encoder_widths), list(self.encoder_units)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("encoder_widths", "encoder_units"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)
