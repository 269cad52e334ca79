"""`e4e evaluate`: distortion and editability of inversions across delta scales.

For every image and every delta scale A (codes = latent_avg + w0 + A * deltas):

- distortion between the input and its inversion: MSE, PSNR, SSIM (and LPIPS when its
  weights are present locally). Both are compared as the encoder sees them: at the encoder's
  input resolution (256x256; cars 192x256), 8 bit RGB. The input is the photo (aligned for
  ffhq) after the encoder's bilinear resize; the inversion is the generator's 8-bit output
  resized the same way (see `analysis.reencode_input`).
- how far the code sits from W (mean per-layer delta norm, variance across layers, mean
  Mahalanobis distance from W; see `analysis.latent_report`),
- with `--direction`: the Latent Editing Consistency (`analysis.lec`).

Writes OUT/results.csv (one row per image and scale), OUT/curve.csv (the mean per scale)
and OUT/curve.png (distortion vs editability: PSNR against LEC, or against the distance
from W without a direction), and prints the per-scale means as a table.

LPIPS uses the released files in the weights folder (`e4e download-weights lpips`), else the
`lpips` package when it is installed with its weights; nothing is downloaded.

With a HyperStyle refiner (`--refine hyperstyle`) every image is also refined, and the rows
get a `method` column ("e4e" per delta scale, "hyperstyle" once): the refined image goes
through the same 8-bit view and the same distances, the identity similarity is added for faces
(cosine of ArcFace IR-SE50 features of input and inversion, when `ir_se50` is present), and
`seconds` is the measured time of the inversion itself (e4e: encode + decode; HyperStyle:
W-encode + every refinement pass), without loading, alignment or metrics.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .. import domains
from ..errors import E4EError

BASE_COLUMNS = ["image", "delta_scale", "mse", "psnr", "ssim", "lpips", "delta_norm", "layer_variance", "w_distance"]
REFINE_COLUMNS = ["method", "refine_steps", "id_similarity", "seconds"]  # with a refiner: method first, the rest last
METHODS = ("e4e", "hyperstyle", "pti")
# HyperStyle (Alaluf et al., CVPR 2022) Table 1, CelebA-HQ test set. Their L2 is the MSE of images
# in [-1,1] (4x the MSE on [0,1] reported here), LPIPS (alex) on the same, ID the ArcFace cosine.
PAPER_CELEBA = {"e4e": {"l2": 0.052, "lpips": 0.20, "id": 0.50},
                "hyperstyle": {"l2": 0.019, "lpips": 0.09, "id": 0.76}}
LEC_COLUMNS = ["direction", "strength", "lec_latent", "lec_latent_paper", "drift_latent", "edit_norm", "code_norm",
               "lec_image_mse", "lec_image_psnr", "lec_paper_image_mse", "lec_paper_image_psnr"]


def parse_delta_scales(text: str) -> list[float]:
    """'0,0.25,0.5,1' -> [0.0, 0.25, 0.5, 1.0] (finite, >= 0, duplicates dropped, order kept)."""
    out: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise E4EError(f"bad --delta-scales {text!r}: {part!r} is not a number (use e.g. 0,0.25,0.5,1)") from None
        if not math.isfinite(v) or v < 0:
            raise E4EError(f"bad --delta-scales {text!r}: every scale must be a finite number >= 0")
        if v not in out:
            out.append(v)
    if not out:
        raise E4EError("--delta-scales is empty (use e.g. 0,0.25,0.5,1)")
    return out


def fmt_cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6g}"
    return str(v)


def csv_text(rows: list[dict], columns: list[str]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([fmt_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def _mean(values) -> Optional[float]:
    """Mean of the non-None values (inf when one is inf, e.g. the PSNR of identical images)."""
    vals = [float(v) for v in values if v is not None]
    return float(sum(vals) / len(vals)) if vals else None


def _load_input(path: Path, model, align: bool):
    from ..images import load_image

    if not path.exists():
        raise E4EError(f"{path}: no such file")
    if align and domains.aligns_faces(model.domain):
        from ..alignment import align_photo

        return align_photo(path, face="largest")[0].image
    return load_image(path)


@dataclass
class Meters:
    """The optional distances of a run: functions of two uint8 views [H,W,3] -> float, or None
    with the text reports print instead (`lpips_na`, `identity_na`)."""

    lpips: Optional[Callable] = None
    lpips_na: str = ""
    identity: Optional[Callable] = None
    identity_na: str = ""


def _signed(u8):
    """uint8 [H,W,3] -> float32 [1,3,H,W] in [-1,1] (what the loss networks take)."""
    import torch

    return torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 127.5 - 1


def _na(group: str) -> str:
    return f"n/a (e4e download-weights {group})"


def load_meters(domain: str, *, weights_dir=None, identity: bool = False) -> Meters:
    """LPIPS (the released files, else the `lpips` package, else n/a) and, with `identity`, the
    ArcFace similarity for face domains (n/a without `ir_se50`; n/a for other domains: their
    MoCo features are a training loss, not an identity). A present but broken file is an error."""
    import torch

    from .. import metrics
    from ..errors import MissingWeightsError
    from ..train.lossnets import load_identity_loss, load_lpips

    out = Meters()
    try:
        net = load_lpips(weights_dir=weights_dir)
    except MissingWeightsError:
        net = None
    if net is not None:
        @torch.inference_mode()
        def lpips(a, b) -> float:
            return float(net(_signed(a), _signed(b))[0])

        out.lpips = lpips
    else:
        ok, _ = metrics.lpips_status()
        out.lpips, out.lpips_na = (metrics.lpips_distance, "") if ok else (None, _na("lpips"))
    if not identity:
        return out
    if domains.identity_loss(domain) != "arcface":
        out.identity_na = f"n/a ({domain}: identity similarity is for faces)"
        return out
    try:
        ident = load_identity_loss(domain=domain, weights_dir=weights_dir)
    except MissingWeightsError:
        out.identity_na = _na("ir_se50")
        return out

    @torch.inference_mode()
    def similarity(a, b) -> float:
        f = ident.embed(torch.cat([_signed(a), _signed(b)]))  # [2,512], unit length
        return float((f[0] * f[1]).sum())

    out.identity = similarity
    return out


def _timed(fn, device):
    """(fn(), seconds), waiting for a GPU to finish."""
    import torch

    t0 = time.perf_counter()
    result = fn()
    if getattr(device, "type", None) == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - t0


@dataclass
class Evaluation:
    """`rows` (one per image and scale, plus one per refined image), `failures` [(input, reason)]
    and, with a refiner, `views` [(input, input_u8, e4e_u8 at scale 1, refined_u8)] of what was compared."""

    rows: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    views: list = field(default_factory=list)


def check_refiner_pair(model, refiner) -> None:
    """The refiner must see the photo as the e4e encoder does: same domain and input size."""
    if refiner.domain != model.domain or tuple(refiner.input_size) != tuple(model.input_size):
        raise E4EError(f"the refiner {Path(refiner.path).name} is a {refiner.domain} checkpoint "
                       f"({refiner.input_size[0]}x{refiner.input_size[1]} input), the e4e checkpoint a "
                       f"{model.domain} one ({model.input_size[0]}x{model.input_size[1]}): they must match")


def evaluate_images(paths: list[Path], model, scales: list[float], *, direction=None, direction_label: str = "",
                    strength: float = 3.0, align: bool = True, log=None, meters: Optional[Meters] = None,
                    refiner=None, refine_steps: Optional[int] = None, pti=None) -> Evaluation:
    """Rows, failures and compared views (see `Evaluation` and the module docstring). With a
    refiner (HyperStyle and/or `pti`, a pti.PTI) the scales must include 1 (the e4e the
    refinement is compared with)."""
    from .. import analysis, metrics
    from ..refine import DEFAULT_STEPS

    meters = meters or Meters(lpips=metrics.lpips_distance)
    comparing = refiner is not None or pti is not None
    if refiner is not None:
        check_refiner_pair(model, refiner)
    if comparing:
        if 1.0 not in scales:
            raise E4EError("the side-by-side with the refiner needs delta scale 1 among the scales")
    steps = DEFAULT_STEPS if refine_steps is None else int(refine_steps)
    stats = analysis.w_statistics(model)
    ev = Evaluation()

    def view(decoded):  # e4e's and the refined decodes alike: [1,3,H,W] -> the 8-bit encoder view [h,w,3]
        return model.to_uint8(analysis.reencode_input(model, decoded))[0]

    def distances(input_u8, inv_u8) -> dict:
        dist = metrics.distortion(input_u8, inv_u8, with_lpips=False)
        dist["lpips"] = meters.lpips(input_u8, inv_u8) if meters.lpips else None
        if comparing:
            dist["id_similarity"] = meters.identity(input_u8, inv_u8) if meters.identity else None
        return dist

    for path in paths:
        try:
            image = _load_input(path, model, align)
            x = model.preprocess([image])
            parts, t_encode = _timed(lambda: model.encode_parts(x), model.device)
            input_u8 = model.to_uint8(x)[0]
            rows = []  # this image's: kept only when all of them (the refined one included) worked
            for a in scales:
                if direction is not None and not comparing:  # G(w) comes with the LEC's decodes
                    res, decoded = analysis.lec_details(model, x, direction, strength, a, parts=parts)
                    t_decode = None
                else:
                    decoded, t_decode = _timed(lambda: model.decode(parts.codes(a)), model.device)
                    res = {} if direction is None else analysis.lec_details(model, x, direction, strength, a,
                                                                            parts=parts)[0]
                inv_u8 = view(decoded)
                dist = distances(input_u8, inv_u8)
                rep = analysis.latent_report(model, parts.w0[0], parts.deltas[0], a, stats=stats)
                row = {"image": str(path), "delta_scale": a, **dist, "delta_norm": rep["mean_delta_norm"],
                       "layer_variance": rep["layer_variance"], "w_distance": rep["mean_w_distance"]}
                if comparing:
                    row.update({"method": "e4e", "seconds": t_encode + t_decode})
                if direction is not None:
                    row.update({"direction": direction_label, "strength": strength})
                    row.update({k: res[k] for k in LEC_COLUMNS if k in res})
                rows.append(row)
                if a == 1.0:
                    e4e_u8 = inv_u8
                if log:
                    log(f"{path.name}: delta scale {a:g}: PSNR {dist['psnr']:.2f} dB, SSIM {dist['ssim']:.4f}"
                        + (f", LEC {res['lec_latent']:.4g}" if direction is not None else ""))
            if not comparing:
                ev.rows += rows
                continue
            shown = []
            if refiner is not None:
                refined, t_refine = _timed(lambda: refiner.refine(x, steps=steps), refiner.device)
                shown.append(("hyperstyle", view(refined.image), steps, t_refine))
            if pti is not None:  # pivot (e4e), tuning and the tuned decode, timed together
                tuned, t_refine = _timed(lambda: pti.refine(pti.preprocess([image])), pti.device)
                shown.append(("pti", view(tuned.image), tuned.tuned[0].log.steps, t_refine))
            for method, ref_u8, n_steps, t_refine in shown:
                dist = distances(input_u8, ref_u8)
                rows.append({"method": method, "image": str(path), "delta_scale": None, **dist,
                             "refine_steps": n_steps, "seconds": t_refine})
                if log:
                    log(f"{path.name}: {method} ({steps_text(n_steps)}): PSNR {dist['psnr']:.2f} dB, "
                        f"SSIM {dist['ssim']:.4f}, {t_refine:.2f} s")
            ev.rows += rows
            ev.views.append((str(path), input_u8, e4e_u8, *[u8 for _, u8, _, _ in shown]))
        except E4EError as exc:
            ev.failures.append((str(path), str(exc)))
    return ev


def steps_text(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def side_by_side(rows: list[dict]) -> list[dict]:
    """Per method, the mean over images of every distance and of `seconds` (e4e: delta scale 1)."""
    out = []
    for method in METHODS:
        sel = [r for r in rows if r.get("method") == method and (method != "e4e" or r["delta_scale"] == 1.0)]
        if sel:
            keys = ("mse", "psnr", "ssim", "lpips", "id_similarity", "seconds")
            out.append({"method": method, "n_images": len(sel), "refine_steps": sel[0].get("refine_steps"),
                        **{k: _mean(r.get(k) for r in sel) for k in keys}})
    return out


def curve_rows(rows: list[dict], scales: list[float], columns: list[str]) -> list[dict]:
    """The mean of every numeric column per delta scale (with the number of images)."""
    numeric = [c for c in columns if c not in ("image", "delta_scale", "direction")]
    out = []
    for a in scales:
        sel = [r for r in rows if r["delta_scale"] == a]
        if not sel:
            continue
        mean = {"delta_scale": a, "n_images": len(sel)}
        for c in numeric:
            mean[c] = _mean(r.get(c) for r in sel)
        out.append(mean)
    return out
