"""`e4e evaluate`: a thin wrapper over `jobs.evaluate` (what it measures is said there)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import E4EError
from . import options


def evaluate_command(
    images: List[Path] = typer.Argument(..., help="Photos or folders of photos."),
    direction: Optional[str] = typer.Option(None, "--direction", "-d", help="Also measure the Latent Editing Consistency of this edit (preset, file, ganspace:..., sefa:K[:LAYERS])."),
    strength: float = typer.Option(3.0, "--strength", "-s", help="Edit strength S for the LEC (+S, then -S)."),
    delta_scales: str = typer.Option("0,0.25,0.5,1", "--delta-scales", help="Comma-separated delta scales to evaluate (0 = pure W, 1 = e4e)."),
    domain: Optional[str] = options.domain_option(),
    checkpoint: Optional[Path] = options.checkpoint_option(),
    device: str = options.device_option(),
    out: Path = typer.Option(Path("e4e-out/evaluate"), "--out", help="Output folder (results.csv, curve.csv, curve.png)."),
    pca: Optional[Path] = typer.Option(None, "--pca", help="GANSpace PCA file for ganspace:COMP:START:END."),
    weights_dir: Optional[Path] = options.weights_dir_option(),
    no_align: bool = typer.Option(False, "--no-align", help="Do not align faces (ffhq photos are aligned by default)."),
):
    """Distortion (MSE/PSNR/SSIM/LPIPS) and editability (LEC) of inversions across delta scales."""
    from rich.console import Console
    from rich.table import Table

    from ..charts import curve_chart
    from ..editing import check_strength, resolve_direction
    from ..fsutil import atomic_save_image, atomic_write, ensure_dir
    from ..jobs.evaluate import BASE_COLUMNS, LEC_COLUMNS, csv_text, curve_rows, evaluate_images, parse_delta_scales
    from ..jobs.outputs import expand_inputs
    from ..metrics import LPIPS_NA, lpips_status
    from ..model import ModelOptions, load_model

    options.check_domain(domain)
    scales = parse_delta_scales(delta_scales)
    strength = check_strength(strength)
    paths = expand_inputs(images)
    model = load_model(ModelOptions(domain=domain, checkpoint=checkpoint, device=device,
                                    weights_dir=weights_dir))
    resolved = None
    if direction is not None:
        resolved = resolve_direction(direction, model, pca_file=pca, weights_dir=weights_dir)
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
    results_csv = atomic_write(out / "results.csv", lambda fh: fh.write(csv_text(rows, columns).encode("utf-8")))
    curve_csv = atomic_write(out / "curve.csv", lambda fh: fh.write(csv_text(curve, curve_columns).encode("utf-8")))
    n_img = len({r["image"] for r in rows})
    if resolved is not None:
        y_key, y_label = "lec_latent", "LEC: latent L2 after the +S/-S round trip (lower = more editable)"
        title = f"Distortion vs editability: {n_img} image(s), {direction} at strength {strength:g}"
    else:
        y_key, y_label = "w_distance", "mean distance from W (Mahalanobis)"
        title = f"Distortion vs closeness to W: {n_img} image(s)"
    chart = curve_chart(curve, x_key="psnr", y_key=y_key, x_label="PSNR of the inversion (dB, higher = less distortion)",
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
