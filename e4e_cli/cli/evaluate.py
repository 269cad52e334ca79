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
Heavy modules are imported inside the function so `e4e --help` stays fast.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from .invert import DOMAIN_HELP
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


def _fmt_cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6g}"
    return str(v)


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_fmt_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def _mean(values) -> Optional[float]:
    """Mean of the non-None values (inf when one is inf, e.g. the PSNR of identical images)."""
    vals = [float(v) for v in values if v is not None]
    return float(sum(vals) / len(vals)) if vals else None


def _load_input(path: Path, model, align: bool):
    from ..images import load_image

    if not path.exists():
        raise E4EError(f"{path}: no such file")
    if align and model.domain == "ffhq":
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


def evaluate_command(
    images: List[Path] = typer.Argument(..., help="Photos or folders of photos."),
    direction: Optional[str] = typer.Option(None, "--direction", "-d", help="Also measure the Latent Editing Consistency of this edit (preset, file, ganspace:..., sefa:K[:LAYERS])."),
    strength: float = typer.Option(3.0, "--strength", "-s", help="Edit strength S for the LEC (+S, then -S)."),
    delta_scales: str = typer.Option("0,0.25,0.5,1", "--delta-scales", help="Comma-separated delta scales to evaluate (0 = pure W, 1 = e4e)."),
    domain: Optional[str] = typer.Option(None, "--domain", help=DOMAIN_HELP),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="e4e checkpoint (default: the domain's file in the weights folder)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    out: Path = typer.Option(Path("e4e-out/evaluate"), "--out", help="Output folder (results.csv, curve.csv, curve.png)."),
    pca: Optional[Path] = typer.Option(None, "--pca", help="GANSpace PCA file for ganspace:COMP:START:END."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", envvar="E4E_WEIGHTS_DIR", help="Weights folder."),
    no_align: bool = typer.Option(False, "--no-align", help="Do not align faces (ffhq photos are aligned by default)."),
):
    """Distortion (MSE/PSNR/SSIM/LPIPS) and editability (LEC) of inversions across delta scales."""
    from rich.console import Console
    from rich.table import Table

    from .. import analysis
    from ..jobs import invert as pipeline
    from .invert import _check_domain
    from ..editing import check_strength
    from ..fsutil import atomic_save_image, atomic_write, ensure_dir
    from ..metrics import LPIPS_NA, lpips_status

    _check_domain(domain)
    scales = parse_delta_scales(delta_scales)
    strength = check_strength(strength)
    paths = pipeline.expand_inputs(images)
    model = pipeline.load_model(pipeline.ModelOptions(domain=domain, checkpoint=checkpoint, device=device,
                                                      weights_dir=weights_dir))
    resolved = None
    if direction is not None:
        resolved = pipeline.resolve_direction(direction, model, pca_file=pca, weights_dir=weights_dir)
    out = ensure_dir(out)
    err = Console(stderr=True)
    rows, failures = evaluate_images(paths, model, scales, direction=resolved, direction_label=direction or "",
                                     strength=strength, align=not no_align,
                                     log=lambda m: err.print(m, highlight=False, markup=False))
    for name, reason in failures:
        typer.echo(f"e4e: error: {name}: {reason}", err=True)
    if not rows:
        raise E4EError(f"nothing evaluated: {failures[0][1]}" if failures else "nothing evaluated")

    columns = BASE_COLUMNS + (LEC_COLUMNS if resolved is not None else [])
    curve = curve_rows(rows, scales, columns)
    curve_columns = ["delta_scale", "n_images"] + [c for c in columns if c not in ("image", "delta_scale", "direction")]
    results_csv = atomic_write(out / "results.csv", lambda fh: fh.write(_csv_text(rows, columns).encode("utf-8")))
    curve_csv = atomic_write(out / "curve.csv", lambda fh: fh.write(_csv_text(curve, curve_columns).encode("utf-8")))
    n_img = len({r["image"] for r in rows})
    if resolved is not None:
        y_key, y_label = "lec_latent", "LEC: latent L2 after the +S/-S round trip (lower = more editable)"
        title = f"Distortion vs editability: {n_img} image(s), {direction} at strength {strength:g}"
    else:
        y_key, y_label = "w_distance", "mean distance from W (Mahalanobis)"
        title = f"Distortion vs closeness to W: {n_img} image(s)"
    chart = analysis.curve_chart(curve, x_key="psnr", y_key=y_key, x_label="PSNR of the inversion (dB, higher = less distortion)",
                                 y_label=y_label, title=title)
    curve_png = atomic_save_image(chart, out / "curve.png")

    lp_ok, _ = lpips_status()
    short = lambda v: "n/a" if v is None else ("inf" if v == math.inf else f"{v:.4g}")  # noqa: E731
    table = Table(title=f"e4e evaluate: mean over {n_img} image(s) per delta scale")
    headers = ["A", "PSNR", "SSIM", "LPIPS", "W dist"]
    if resolved is not None:
        headers += ["LEC", "LEC paper", "drift", "LEC PSNR"]
    for h in headers:
        table.add_column(h, justify="right")
    for c in curve:
        cells = [f"{c['delta_scale']:g}", short(c["psnr"]), short(c["ssim"]), short(c["lpips"]) if lp_ok else "n/a",
                 short(c["w_distance"])]
        if resolved is not None:
            cells += [short(c["lec_latent"]), short(c["lec_latent_paper"]), short(c["drift_latent"]), short(c["lec_image_psnr"])]
        table.add_row(*cells)
    console = Console()
    console.print(table)
    console.print("A = delta scale; PSNR in dB at the encoder's resolution; W dist = mean Mahalanobis distance from W"
                  + ("; LEC = latent L2 after the +S/-S round trip (see results.csv for all columns)" if resolved is not None else ""),
                  highlight=False, markup=False)
    if not lp_ok:
        console.print(f"LPIPS: {LPIPS_NA}", highlight=False, markup=False)
    console.print(f"wrote {results_csv}, {curve_csv} and {curve_png}", highlight=False, markup=False)
    if failures:
        raise typer.Exit(1)
