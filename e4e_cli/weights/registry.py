"""The registry: every file the tool can download, with its size, SHA-256, sources and licence.

`ASSETS` maps a name to its `Asset`; `GROUPS` maps the names accepted on the command line
(`e4e download-weights ffhq directions`) to assets. Which domain uses which checkpoint and
PCA file is in `domains.py`; where the files live is `locate.py`; the downloader is `fetch.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from ..errors import E4EError


HTML_SNIFF = 512  # bytes looked at to recognise an HTML page

# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compressed:
    """How a file travels when it is not stored as-is (dlib's landmarks come as .bz2)."""

    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Asset:
    """One file the tool can use. `urls` are tried in order; `compressed` describes the
    wire form when the file is downloaded compressed (then `urls` are the wire URLs)."""

    name: str
    filename: str
    size: int
    sha256: str
    urls: Tuple[str, ...]
    group: str
    description: str
    licence: str
    compressed: Optional[Compressed] = None
    domain: Optional[str] = None  # the StyleGAN2 domain the file belongs to, if any

    @property
    def wire_filename(self) -> str:
        return self.compressed.filename if self.compressed else self.filename

    @property
    def wire_size(self) -> int:
        return self.compressed.size if self.compressed else self.size

    @property
    def wire_sha256(self) -> str:
        return self.compressed.sha256 if self.compressed else self.sha256


_HF = "https://huggingface.co/public-data/e4e/resolve/main/"
_GDRIVE = "https://drive.google.com/uc?export=download&id="
_GH_RAW = "https://raw.githubusercontent.com/omertov/encoder4editing/main/editings/"
_LANDMARKS_BZ2 = "shape_predictor_68_face_landmarks.dat.bz2"

_E4E_LICENCE = (
    "e4e code MIT; the checkpoint embeds NVIDIA's StyleGAN2 generator "
    "(Nvidia Source Code License-NC): non-commercial use"
)
_DIRECTIONS_LICENCE = "MIT (omertov/encoder4editing)"


def _checkpoint(name: str, size: int, sha256: str, drive_id: str, description: str) -> Asset:
    filename = f"e4e_{name}_encode.pt"
    return Asset(
        name=name,
        filename=filename,
        size=size,
        sha256=sha256,
        urls=(_HF + filename, _GDRIVE + drive_id),
        group=name,
        description=description,
        licence=_E4E_LICENCE,
        domain=name,
    )


def _direction(name: str, folder: str, size: int, sha256: str, domain: str, description: str) -> Asset:
    filename = f"{name}.pt"
    return Asset(
        name=name,
        filename=filename,
        size=size,
        sha256=sha256,
        urls=(f"{_GH_RAW}{folder}/{filename}",),
        group="directions",
        description=description,
        licence=_DIRECTIONS_LICENCE,
        domain=domain,
    )


_REGISTRY: Tuple[Asset, ...] = (
    _checkpoint(
        "ffhq", 1201649680, "2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999",
        "1cUv_reLE6k3604or78EranS7XzuVMWeO", "e4e encoder + StyleGAN2 generator, FFHQ faces (1024 px)",
    ),
    _checkpoint(
        "cars", 1077493298, "f1743d4a9fe701643916062d7c40a4ec3d5daaa153de1ef941285d3ed3758330",
        "17faPqBce2m1AQeLCLHUVXaDfxMRU2QcV", "e4e encoder + StyleGAN2 generator, Stanford Cars (512 px)",
    ),
    _checkpoint(
        "horse", 959033364, "bfcd7ac19571fab277d933d3133a1249d89f49ba948cfcc399ea271201f5c95f",
        "1TkLLnuX86B_BMo2ocYD0kX9kWh53rUVX", "e4e encoder + StyleGAN2 generator, LSUN horses (256 px)",
    ),
    _checkpoint(
        "church", 959033364, "590f00e84b6461ba05467f7b0c705972f0ed729f4e399d3e21bfdb1b781e1c93",
        "1-L0ZdnQLwtdy6-A_Ccgq5uNJGTqE7qBa", "e4e encoder + StyleGAN2 generator, LSUN churches (256 px)",
    ),
    _direction(
        "age", "interfacegan_directions", 2808,
        "50074516b1629707d89b5e43d6b8abd1792212fa3b961a87a11323d6a5222ae0", "ffhq",
        "InterFaceGAN direction: age (FFHQ)",
    ),
    _direction(
        "smile", "interfacegan_directions", 2808,
        "817a7e732b59dee9eba862bec8bd7e8373568443bc9f9731a21cf9b0356f0653", "ffhq",
        "InterFaceGAN direction: smile (FFHQ)",
    ),
    _direction(
        "pose", "interfacegan_directions", 37624,
        "736e0eacc8488fa0b020a2e7bd256b957284c364191dfea693705e5d06d43e7d", "ffhq",
        "InterFaceGAN direction: head pose (FFHQ)",
    ),
    _direction(
        "ffhq_pca", "ganspace_pca", 167562,
        "4d7f9df1c96180d9026b9cb8d04753579fbf385f321a9d0e263641601c5e5d36", "ffhq",
        "GANSpace PCA components (FFHQ)",
    ),
    _direction(
        "cars_pca", "ganspace_pca", 167562,
        "a5c3bae61ecd85de077fbbf103f5f30cf4b7676fe23a8508166eaf2ce73c8392", "cars",
        "GANSpace PCA components (cars)",
    ),
    Asset(
        name="landmarks",
        filename="shape_predictor_68_face_landmarks.dat",
        size=99693937,
        sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        urls=(
            "http://dlib.net/files/" + _LANDMARKS_BZ2,
            "https://github.com/davisking/dlib-models/raw/master/" + _LANDMARKS_BZ2,
        ),
        group="landmarks",
        description="dlib 68-point face landmark model (used by `e4e align`)",
        licence="dlib model trained on iBUG 300-W, whose licence excludes commercial use",
        compressed=Compressed(
            filename=_LANDMARKS_BZ2,
            size=64040097,
            sha256="7d6637b8f34ddb0c1363e09a4628acb34314019ec3566fd66b80c04dda6980f5",
        ),
    ),
)

# Loss networks for `e4e train` (issue 14). AlexNet's SHA-256 starts with the 8 digits in
# torchvision's file name; LPIPS's linear layers are the file the `lpips` package ships. IR-SE50
# and MoCo-v2 have no published size or hash: size 0 / sha256 "" mark them unverified, downloaded
# as they come (never as an HTML page) and listed as such (see _download_unverified).
_REGISTRY = _REGISTRY + (
    Asset(name="lpips_alexnet", filename="alexnet-owt-7be5be79.pth", size=244408911,
          sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
          urls=("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",), group="lpips",
          description="AlexNet ImageNet features (torchvision), the backbone of the LPIPS loss",
          licence="BSD-3-Clause (torchvision)"),
    Asset(name="lpips_alex", filename="lpips_alex_v0.1.pth", size=6009,
          sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
          urls=("https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/alex.pth",),
          group="lpips", description="LPIPS v0.1 linear layers on AlexNet features",
          licence="BSD-2-Clause (richzhang/PerceptualSimilarity)"),
    Asset(name="ir_se50", filename="model_ir_se50.pth", size=0, sha256="",
          urls=(_GDRIVE + "1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn",), group="ir_se50",
          description="ArcFace IR-SE50 face recognition (identity loss for faces; encoder initialisation)",
          licence="MIT (TreB1eN/InsightFace_Pytorch)"),
    Asset(name="moco", filename="moco_v2_800ep_pretrain.pth.tar", size=0, sha256="",
          urls=("https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",),
          group="moco", description="MoCo-v2 ResNet-50 (identity-like loss for cars, horses, churches)",
          licence="CC-BY-NC 4.0 (facebookresearch/moco): non-commercial use"),
)

# HyperStyle (issue 23): the refiners and the W-encoders they start from, on Google Drive as the
# reference's README links them. No size or hash is published: unverified (size 0, sha256 ""),
# downloaded as they come but never as an HTML page. Their digests are recorded once downloaded.
_HYPERSTYLE_LICENCE = ("HyperStyle code MIT (yuval-alaluf/hyperstyle); the checkpoint embeds NVIDIA's StyleGAN2 "
                       "generator (Nvidia Source Code License-NC): non-commercial use")
_WILD_LICENCE = ("HyperStyle code MIT (yuval-alaluf/hyperstyle); the generator is NVIDIA's StyleGAN2-ADA trained on "
                 "AFHQ (Nvidia Source Code License-NC; AFHQ images CC BY-NC 4.0): non-commercial use")


def _hyperstyle(name: str, filename: str, drive_id: str, domain: str, description: str, licence: str) -> Asset:
    return Asset(name=name, filename=filename, size=0, sha256="", urls=(_GDRIVE + drive_id,),
                 group=f"hyperstyle_{domain}", description=description, licence=licence, domain=domain)


_REGISTRY = _REGISTRY + (
    _hyperstyle("hyperstyle_ffhq", "hyperstyle_ffhq.pt", "1C3dEIIH1y8w1-zQMCyx7rDF0ndswSXh4", "ffhq",
                "HyperStyle refiner + StyleGAN2 generator, FFHQ faces (1024 px)", _HYPERSTYLE_LICENCE),
    _hyperstyle("w_encoder_ffhq", "faces_w_encoder.pt", "1M-hsL3W_cJKs77xM1mwq2e9-J0_m7rHP", "ffhq",
                "W-encoder HyperStyle starts from, FFHQ faces", _HYPERSTYLE_LICENCE),
    _hyperstyle("hyperstyle_cars", "hyperstyle_cars.pt", "1WZ7iNv5ENmxXFn6dzPeue1jQGNp6Nr9d", "cars",
                "HyperStyle refiner + StyleGAN2 generator, Stanford Cars (512 px)", _HYPERSTYLE_LICENCE),
    _hyperstyle("w_encoder_cars", "cars_w_encoder.pt", "1GZke8pfXMSZM9mfT-AbP1Csyddf5fas7", "cars",
                "W-encoder HyperStyle starts from, Stanford Cars", _HYPERSTYLE_LICENCE),
    _hyperstyle("hyperstyle_wild", "hyperstyle_afhq_wild.pt", "1OMAKYRp3T6wzGr0s3887rQK-5XHlJ2gp", "wild",
                "HyperStyle refiner + StyleGAN2-ADA generator, AFHQ wild animals (512 px)", _WILD_LICENCE),
    _hyperstyle("w_encoder_wild", "afhq_wild_w_encoder.pt", "1MhEHGgkTpnTanIwuHYv46i6MJeet2Nlr", "wild",
                "W-encoder HyperStyle starts from, AFHQ wild animals", _WILD_LICENCE),
)

# StyleCLIP's global directions (issue 33): CLIP ViT-B/32 in transformers' safetensors layout (OpenAI's
# weights as openai/clip-vit-base-patch32 publishes them: no size or hash could be read from the
# build machines, so unverified until recorded), CLIP's BPE vocabulary (the file OpenAI's CLIP and
# open_clip ship; hash and size read from the open-clip-torch 3.3.0 and clip-anytorch 2.6.0 wheels,
# the same bytes in both) and StyleCLIP's released FFHQ relevance matrix fs3 (unverified).
_CLIP_LICENCE = "MIT (openai/CLIP); OpenAI's model card: research use, not for deployment without in-domain testing"
_REGISTRY = _REGISTRY + (
    Asset(name="clip_vit_b32", filename="clip-vit-base-patch32.safetensors", size=0, sha256="",
          urls=("https://huggingface.co/openai/clip-vit-base-patch32/resolve/main/model.safetensors",), group="clip",
          description="CLIP ViT-B/32 (OpenAI's weights, transformers' CLIPModel layout) for text edits",
          licence=_CLIP_LICENCE),
    Asset(name="clip_vocab", filename="bpe_simple_vocab_16e6.txt.gz", size=1356917,
          sha256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
          urls=("https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz",
                "https://github.com/mlfoundations/open_clip/raw/main/src/open_clip/bpe_simple_vocab_16e6.txt.gz"),
          group="clip", description="CLIP's byte-pair vocabulary (49,408 tokens)", licence="MIT (openai/CLIP)"),
    Asset(name="styleclip_ffhq", filename="styleclip_ffhq_fs3.npy", size=0, sha256="",
          urls=("https://github.com/orpatashnik/StyleCLIP/raw/main/global_torch/npy/ffhq/fs3.npy",), group="styleclip_ffhq",
          description="StyleCLIP's channel relevance fs3 for FFHQ StyleGAN2 (text edits of faces)",
          licence="MIT (orpatashnik/StyleCLIP)", domain="ffhq"),
)

#: file-level name -> asset
ASSETS: Dict[str, Asset] = {a.name: a for a in _REGISTRY}

#: name accepted on the command line -> asset names, in download order
GROUPS: Dict[str, List[str]] = {
    "ffhq": ["ffhq"],
    "cars": ["cars"],
    "horse": ["horse"],
    "church": ["church"],
    "directions": ["age", "smile", "pose", "ffhq_pca", "cars_pca"],
    "landmarks": ["landmarks"],
    "lpips": ["lpips_alexnet", "lpips_alex"],
    "ir_se50": ["ir_se50"],
    "moco": ["moco"],
    "train": ["lpips_alexnet", "lpips_alex", "ir_se50", "moco"],
    "hyperstyle": ["hyperstyle_ffhq", "w_encoder_ffhq", "hyperstyle_cars", "w_encoder_cars",
                   "hyperstyle_wild", "w_encoder_wild"],
    "hyperstyle_ffhq": ["hyperstyle_ffhq", "w_encoder_ffhq"],
    "hyperstyle_cars": ["hyperstyle_cars", "w_encoder_cars"],
    "hyperstyle_wild": ["hyperstyle_wild", "w_encoder_wild"],
    "clip": ["clip_vit_b32", "clip_vocab"],
    "styleclip_ffhq": ["styleclip_ffhq", "clip_vit_b32", "clip_vocab"],
    "all": [a.name for a in _REGISTRY],
}

#: what `e4e download-weights` fetches with no name: what face editing needs
DEFAULT_GROUPS: Tuple[str, ...] = ("ffhq", "directions")


def known_names() -> List[str]:
    """Group names first, then file-level names that are not also group names."""
    names = list(GROUPS)
    names += [n for n in ASSETS if n not in GROUPS]
    return names


def expand_names(names: Optional[Iterable[str]]) -> List[str]:
    """Turn command-line names (groups, asset names or file names) into asset names.

    No name means `DEFAULT_GROUPS`. Unknown names raise one `E4EError` listing them all.
    """
    wanted = [n.strip() for n in (names or ()) if n and n.strip()]
    if not wanted:
        wanted = list(DEFAULT_GROUPS)
    by_file = {a.filename.lower(): a.name for a in ASSETS.values()}
    by_file.update({a.wire_filename.lower(): a.name for a in ASSETS.values()})
    out: List[str] = []
    unknown: List[str] = []
    for raw in wanted:
        key = raw.lower()
        if key in GROUPS:
            members = GROUPS[key]
        elif key in ASSETS:
            members = [key]
        elif key in by_file:
            members = [by_file[key]]
        else:
            unknown.append(raw)
            continue
        out.extend(m for m in members if m not in out)
    if unknown:
        raise E4EError(
            f"unknown weights name{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
            f"choose from {', '.join(known_names())}"
        )
    return out


def get_asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise E4EError(f"unknown weights name {name!r}: choose from {', '.join(known_names())}") from None


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover
