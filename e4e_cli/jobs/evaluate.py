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
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .. import domains
from ..errors import E4EError

BASE_COLUMNS = ["image", "delta_scale", "mse", "psnr", "ssim", "lpips", "delta_norm", "layer_variance", "w_distance"]
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


def evaluate_images(paths: list[Path], model, scales: list[float], *, direction=None, direction_label: str = "",
                    strength: float = 3.0, align: bool = True, log=None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows (one per image and scale) and failures [(input, reason)]; see the module docstring."""
    from .. import analysis, metrics

    stats = analysis.w_statistics(model)
    rows: list[dict] = []
    failures: list[tuple[str, str]] = []
    for path in paths:
        try:
            image = _load_input(path, model, align)
            x = model.preprocess([image])
            parts = model.encode_parts(x)
            input_u8 = model.to_uint8(x)[0]
            for a in scales:
                if direction is not None:
                    res, decoded = analysis.lec_details(model, x, direction, strength, a, parts=parts)
                else:
                    res, decoded = {}, model.decode(parts.codes(a))
                inv_u8 = model.to_uint8(analysis.reencode_input(model, decoded))[0]
                dist = metrics.distortion(input_u8, inv_u8)
                rep = analysis.latent_report(model, parts.w0[0], parts.deltas[0], a, stats=stats)
                row = {"image": str(path), "delta_scale": a, **dist, "delta_norm": rep["mean_delta_norm"],
                       "layer_variance": rep["layer_variance"], "w_distance": rep["mean_w_distance"]}
                if direction is not None:
                    row.update({"direction": direction_label, "strength": strength})
                    row.update({k: res[k] for k in LEC_COLUMNS if k in res})
                rows.append(row)
                if log:
                    log(f"{path.name}: delta scale {a:g}: PSNR {dist['psnr']:.2f} dB, SSIM {dist['ssim']:.4f}"
                        + (f", LEC {res['lec_latent']:.4g}" if direction is not None else ""))
        except E4EError as exc:
            failures.append((str(path), str(exc)))
    return rows, failures


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
