"""Where weights live: the weights folder, and the path of a present asset or the command to get it.

Other modules only need `require_asset(name)` (or `checkpoint_path(domain)`), which returns the
path of a present file or raises `MissingWeightsError` naming the command to run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from .. import settings
from ..digests import sha256_file
from ..domains import DOMAINS
from ..domains import get as get_domain
from ..errors import E4EError, MissingWeightsError
from ..fsutil import sniff_head
from .registry import ASSETS, HTML_SNIFF, Asset, get_asset, human_size

# --------------------------------------------------------------------------------------
# Where weights live
# --------------------------------------------------------------------------------------


def source_checkout_weights() -> Optional[Path]:
    root = Path(__file__).resolve().parents[2]
    if (root / "setup.cfg").is_file() and (root / "weights").is_dir():
        return root / "weights"
    return None


def default_weights_dir() -> Path:
    """`$E4E_WEIGHTS_DIR`; else `weights/` of a source checkout; else the user cache folder."""
    env = settings.weights_dir()
    if env is not None:
        return env
    checkout = source_checkout_weights()
    if checkout is not None:
        return checkout
    return settings.xdg_cache_home() / "e4e"


def resolve_weights_dir(override: Optional[os.PathLike | str] = None) -> Path:
    """`override` (e.g. `--weights-dir`) if given, else `default_weights_dir()`."""
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    return default_weights_dir()


def asset_path(name: str, weights_dir: Optional[os.PathLike | str] = None) -> Path:
    """Where asset `name` lives (present or not)."""
    return resolve_weights_dir(weights_dir) / get_asset(name).filename


def download_hint(asset: Asset) -> str:
    return f"run `e4e download-weights {asset.group}`"


def require_asset(name: str, weights_dir: Optional[os.PathLike | str] = None) -> Path:
    """Path of asset `name` if it is present, else `MissingWeightsError` naming the fix.

    Only existence is checked (plus a cheap check that the file is not an empty file or
    an HTML page saved by a failed download): tests and advanced users may put other
    checkpoints under the same name. `e4e download-weights --verify` checks hashes.
    """
    asset = get_asset(name)
    folder = resolve_weights_dir(weights_dir)
    path = folder / asset.filename
    kind = "checkpoint" if any(d.checkpoint_asset == asset.name for d in DOMAINS.values()) else "file"
    alt = " (or pass --checkpoint PATH)" if kind == "checkpoint" else ""
    not_found = f"{kind} {asset.filename} not found in {folder}: {download_hint(asset)}{alt}"
    if not path.is_file():  # missing, a folder, or not a regular file
        raise MissingWeightsError(not_found)
    problem, detail = sniff_head(path, HTML_SNIFF)
    if problem == "ok":
        return path
    raise MissingWeightsError({
        "missing": not_found,  # changed since the check above
        "folder": not_found,
        "unreadable": f"cannot read {path}: {detail}",
        "empty": f"{path} is empty: {download_hint(asset)}{alt}",
        "html": f"{path} is an HTML page, not the {kind} (a failed download?): delete it and {download_hint(asset)}",
    }[problem])


def checkpoint_path(domain: str, weights_dir: Optional[os.PathLike | str] = None) -> Path:
    """The e4e checkpoint of `domain` (ffhq, cars, horse, church), or MissingWeightsError."""
    d = get_domain(domain)
    if d.checkpoint_asset is None:
        raise E4EError(f"there is no released e4e checkpoint for the {d.name} domain: pass --checkpoint PATH, "
                       f"or invert with `--refine hyperstyle`, which starts from HyperStyle's own W-encoder")
    return require_asset(d.checkpoint_asset, weights_dir)


def refiner_paths(domain: str, weights_dir: Optional[os.PathLike | str] = None) -> tuple[Path, Path]:
    """(HyperStyle checkpoint, W-encoder) of `domain`, or MissingWeightsError naming the download."""
    d = get_domain(domain)
    if d.refiner_asset is None or d.w_encoder_asset is None:
        have = ", ".join(n for n, x in DOMAINS.items() if x.refiner_asset)
        raise E4EError(f"HyperStyle was not released for the {d.name} domain (it was for {have})")
    return require_asset(d.refiner_asset, weights_dir), require_asset(d.w_encoder_asset, weights_dir)


def refiner_files(domain: Optional[str], refiner: Optional[os.PathLike | str], w_encoder: Optional[os.PathLike | str],
                  weights_dir: Optional[os.PathLike | str] = None) -> tuple[Path, Path]:
    """(HyperStyle checkpoint, W-encoder) for `--refine`: the files given; a file not given is the
    one of `domain` in the weights folder, where `domain` (when not given) is what a given refiner
    records, so a missing cars W-encoder is named as such, never as a missing ffhq checkpoint.
    Only the missing file is asked for (MissingWeightsError naming its download)."""
    for p, what in ((refiner, "--refiner"), (w_encoder, "--w-encoder")):
        if p is not None and not Path(p).is_file():
            raise E4EError(f"{what} {p}: no such file")
    if refiner is not None and w_encoder is not None:
        return Path(refiner), Path(w_encoder)
    if domain is None and refiner is not None:
        from ..hyperstyle_ckpt import read_hyperstyle

        domain = read_hyperstyle(refiner).domain  # memory-mapped: the options, not the weights, are read
        if domain not in DOMAINS:
            raise E4EError(f"refiner {refiner} is of the {domain} domain, which has no released W-encoder: pass --w-encoder")
    d = get_domain(domain or "ffhq")
    if d.refiner_asset is None or d.w_encoder_asset is None:
        have = ", ".join(n for n, x in DOMAINS.items() if x.refiner_asset)
        raise E4EError(f"HyperStyle was not released for the {d.name} domain (it was for {have})")
    return (Path(refiner) if refiner is not None else require_asset(d.refiner_asset, weights_dir),
            Path(w_encoder) if w_encoder is not None else require_asset(d.w_encoder_asset, weights_dir))


# --------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------


@dataclass
class AssetStatus:
    name: str
    group: str
    filename: str
    size: int
    state: str  # present, missing, wrong size (N bytes), partial (N%), hash mismatch
    path: Path
    description: str
    licence: str = field(default="")

    @property
    def present(self) -> bool:
        return self.state.startswith("present")


def list_assets(weights_dir: Optional[os.PathLike | str] = None, *, verify: bool = False) -> List[AssetStatus]:
    """One row per registered asset: is it in the weights folder, with the right size?"""
    folder = resolve_weights_dir(weights_dir)
    rows: List[AssetStatus] = []
    for asset in ASSETS.values():
        path = folder / asset.filename
        if path.is_file() and not asset.sha256:
            state = "present (unverified: no published hash)"
        elif path.is_file():
            actual = path.stat().st_size
            if actual != asset.size:
                state = f"wrong size ({human_size(actual)})"
            elif verify:
                state = "present, verified" if sha256_file(path) == asset.sha256 else "hash mismatch"
            else:
                state = "present"
        else:
            part = folder / (asset.wire_filename + ".part")
            if part.is_file():
                pct = 100.0 * part.stat().st_size / max(asset.wire_size, 1)
                state = f"missing (partial {pct:.0f}%)"
            else:
                state = "missing"
        rows.append(AssetStatus(asset.name, asset.group, asset.filename, asset.size, state, path,
                                asset.description, asset.licence))
    return rows
