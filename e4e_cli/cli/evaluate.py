"""`e4e evaluate`: a thin wrapper over `jobs.evaluate` (what it measures is said there)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import E4EError
from . import options

MAX_PICTURE_ROWS = 32
NAMES = {"e4e": "e4e", "hyperstyle": "HyperStyle", "pti": "PTI"}  # side_by_side.png: one row per image, the first 32


@options.interruptible()
def evaluate_command(
    images: List[Path] = typer.Argument(..., help="Photos or folders of photos (not searched recursively); or SOURCE_VIDEO EDITED_VIDEO."),
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
    refine: Optional[str] = options.refine_option(
        "hyperstyle: also refine every inversion with HyperStyle and report e4e and refined side by side "
        "(L2, LPIPS, ID for faces, seconds per image; side_by_side.png). pti: pivotal tuning likewise; "
        "hyperstyle,pti: all three."),
    refine_steps: Optional[int] = options.refine_steps_option(),
    refiner: Optional[Path] = options.refiner_option(),
    w_encoder: Optional[Path] = options.w_encoder_option(),
    pti_steps: Optional[int] = options.pti_steps_option(),
    pti_lr: Optional[float] = options.pti_lr_option(),
    lpips_stop: Optional[float] = options.lpips_stop_option(),
    pivot: Optional[str] = options.pivot_option(),
    pivot_steps: Optional[int] = options.pivot_steps_option(),
    pti_resolution: Optional[int] = options.pti_resolution_option(),
    locality: bool = options.locality_option(),
):
    """Distortion (MSE/PSNR/SSIM/LPIPS) and editability (LEC) of inversions across delta scales;
    with --refine hyperstyle, e4e and HyperStyle side by side. SOURCE.mp4 EDITED.mp4: temporal
    identity (TL-ID, TG-ID) and flicker of an edited clip."""
    from ..video import is_video

    if any(is_video(p) for p in images):
        from .evaluate_video import evaluate_videos_command

        return evaluate_videos_command(images, out=out, weights_dir=weights_dir)
    from rich.console import Console
    from rich.table import Table

    from ..charts import curve_chart
    from ..editing import check_strength, resolve_direction
    from ..fsutil import atomic_save_image, atomic_write, ensure_dir
    from ..jobs.evaluate import (BASE_COLUMNS, LEC_COLUMNS, REFINE_COLUMNS, check_refiner_pair, csv_text, curve_rows,
                                 evaluate_images, load_meters, parse_delta_scales)
    from ..jobs.outputs import expand_inputs
    from ..model import ModelOptions, load_model

    options.check_domain(domain)
    scales = parse_delta_scales(delta_scales)
    strength = check_strength(strength)
    kinds = [k.strip() for k in refine.split(",")] if refine else []
    pti_settings = options.check_pti("pti" if "pti" in kinds else None, pti_steps, pti_lr, lpips_stop,
                                     pivot, locality, pivot_steps, pti_resolution)
    others = [k for k in kinds if k != "pti"]
    if len(others) > 1:
        raise E4EError(f"unknown --refine {refine!r}: choose hyperstyle, pti or hyperstyle,pti", exit_code=2)
    hs_refining = options.check_refine(others[0] if others else None, refine_steps, refiner, w_encoder)
    refining = hs_refining or pti_settings is not None
    if refining and 1.0 not in scales:
        scales.append(1.0)  # the e4e that the refinement is compared with
    paths = expand_inputs(images)
    model = load_model(ModelOptions(domain=domain, checkpoint=checkpoint, device=device,
                                    weights_dir=weights_dir))
    hyperstyle = pti = None
    if pti_settings is not None:
        from ..pti import PTI
        from ..train.lossnets import load_lpips

        pti = PTI(model, load_lpips(weights_dir=weights_dir), pti_settings)
    if hs_refining:
        from ..refine import load_refiner
        from ..weights.locate import refiner_files

        # given files are checked against the e4e checkpoint by the job; missing ones are the domain's
        both_given = refiner is not None and w_encoder is not None
        refiner, w_encoder = refiner_files(model.domain, refiner, w_encoder, weights_dir)
        hyperstyle = load_refiner(domain=None if both_given else model.domain, refiner=refiner, w_encoder=w_encoder,
                                  device=device, weights_dir=weights_dir)
        check_refiner_pair(model, hyperstyle)
    resolved = None
    if direction is not None:
        resolved = resolve_direction(direction, model, pca_file=pca, weights_dir=weights_dir)
    meters = load_meters(model.domain, weights_dir=weights_dir, identity=refining)
    out = ensure_dir(out)
    err = Console(stderr=True)
    ev = evaluate_images(paths, model, scales, direction=resolved, direction_label=direction or "",
                         strength=strength, align=not no_align, meters=meters, refiner=hyperstyle,
                         refine_steps=refine_steps, pti=pti, log=lambda m: err.print(m, highlight=False, markup=False))
    rows, failures = ev.rows, ev.failures
    for name, reason in failures:
        typer.echo(f"e4e: error: {name}: {reason}", err=True)
    if not rows:
        raise E4EError(f"nothing evaluated: {failures[0][1]}" if failures else "nothing evaluated")

    columns = BASE_COLUMNS + (LEC_COLUMNS if resolved is not None else [])
    curve = curve_rows([r for r in rows if r.get("method", "e4e") == "e4e"], scales, columns)
    if refining:
        columns = REFINE_COLUMNS[:1] + columns + REFINE_COLUMNS[1:]
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

    short = lambda v: "n/a" if v is None else ("inf" if v == math.inf else f"{v:.4g}")  # noqa: E731
    table = Table(title=f"e4e evaluate: mean over {n_img} image(s) per delta scale")
    headers = ["A", "PSNR", "SSIM", "LPIPS", "W dist"]
    if resolved is not None:
        headers += ["LEC", "LEC paper", "drift", "LEC PSNR"]
    for h in headers:
        table.add_column(h, justify="right")
    for c in curve:
        cells = [f"{c['delta_scale']:g}", short(c["psnr"]), short(c["ssim"]), short(c["lpips"]),
                 short(c["w_distance"])]
        if resolved is not None:
            cells += [short(c["lec_latent"]), short(c["lec_latent_paper"]), short(c["drift_latent"]), short(c["lec_image_psnr"])]
        table.add_row(*cells)
    console = Console()
    console.print(table)
    console.print("A = delta scale; PSNR in dB at the encoder's resolution; W dist = mean Mahalanobis distance from W"
                  + ("; LEC = latent L2 after the +S/-S round trip (see results.csv for all columns)" if resolved is not None else ""),
                  highlight=False, markup=False)
    if meters.lpips is None:
        console.print(f"LPIPS: {meters.lpips_na}", highlight=False, markup=False)
    written = [results_csv, curve_csv, curve_png]
    if refining:
        written.append(_side_by_side(console, ev, model.domain, meters, out))
    console.print(f"wrote {', '.join(map(str, written[:-1]))} and {written[-1]}", highlight=False, markup=False)
    if failures:
        raise typer.Exit(1)


def _side_by_side(console, ev, domain: str, meters, out: Path) -> Path:
    """Print e4e vs HyperStyle (means over the images) and write OUT/side_by_side.png."""
    from PIL import Image
    from rich.table import Table

    from ..charts import image_grid
    from ..domains import identity_loss
    from ..fsutil import atomic_save_image
    from ..jobs.evaluate import PAPER_CELEBA, side_by_side, steps_text

    faces = identity_loss(domain) == "arcface"
    short = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    means = side_by_side(ev.rows)
    n_img = max(m["n_images"] for m in means)
    table = Table(title=f"e4e vs {' vs '.join(NAMES[m['method']] for m in means[1:])}: mean over {n_img} image(s)")
    headers = ["method", "L2 (MSE)", "PSNR", "LPIPS"] + (["ID"] if faces else []) + ["s/img"]
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for m in means:
        label = "e4e" if m["method"] == "e4e" else f"{m['method']} ({steps_text(m['refine_steps'])})"
        table.add_row(label, short(m["mse"]), short(m["psnr"]), short(m["lpips"]),
                      *([short(m["id_similarity"])] if faces else []), f"{m['seconds']:.2f}")
    console.print(table)
    notes = ["L2 = MSE on [0,1] pixels and LPIPS at the encoder's resolution, both methods through the same 8-bit view; "
             "s/img = the inversion alone (e4e at delta scale 1)"]
    if faces:
        notes.append("ID = cosine similarity of ArcFace features (input, inversion)" if meters.identity is not None
                     else f"ID: {meters.identity_na}")
        paper = "; ".join(f"{k} L2 {v['l2']}, LPIPS {v['lpips']}, ID {v['id']}" for k, v in PAPER_CELEBA.items())
        notes.append(f"HyperStyle paper, CelebA-HQ: {paper} (their L2 is on [-1,1] pixels: 4x this L2)")
    for n in notes:
        console.print(n, highlight=False, markup=False)

    by_image = {(r["image"], r["method"]): r for r in ev.rows if r.get("method") in ("hyperstyle", "pti")
                or (r.get("method") == "e4e" and r["delta_scale"] == 1.0)}
    methods = [m["method"] for m in means]
    cells, captions = [], []
    for name, *views in ev.views[:MAX_PICTURE_ROWS]:
        cells.append([Image.fromarray(a) for a in views])
        caps = [Path(name).name[:40]]
        for method in methods:
            r = by_image[(name, method)]
            caps.append(f"L2 {short(r['mse'])}  LPIPS {short(r['lpips'])}\n"
                        + (f"ID {short(r['id_similarity'])}  " if faces else "") + f"{r['seconds']:.2f} s")
        captions.append(caps)
    grid = image_grid(cells, headers=["input"] + [f"{NAMES[m['method']]} ({steps_text(m['refine_steps'])})"
                                                  if m["method"] != "e4e" else "e4e" for m in means],
                      captions=captions)
    if len(ev.views) > MAX_PICTURE_ROWS:
        console.print(f"side_by_side.png shows the first {MAX_PICTURE_ROWS} of {len(ev.views)} images",
                      highlight=False, markup=False)
    return atomic_save_image(grid, out / "side_by_side.png")
