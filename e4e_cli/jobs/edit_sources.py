"""What `e4e edit` edits and what decodes it: the sources (latent files, invert folders' latents,
refined latent files, photos) and the model chosen from their records.

A latent is decoded by what made it, identified by content (SHA-256), never by name:
- a plain e4e latent of an `e4e invert` folder: the checkpoint its meta.json records (the file
  recorded if its content is unchanged, else the domain's released file if that is the same
  content); `--checkpoint` overrides it;
- a HyperStyle-refined latent (an invert folder with weight_offsets.npz, or one `.npz` file
  holding the code, the offsets and their record: `refine.save_offsets(latent=)`): the
  HyperStyle checkpoint that refined it, with its own offsets;
- photos: inverted first by that model (`--refine hyperstyle`: refined by HyperStyle).
One run decodes with one model: a source made by another is a failed item ("edit it in its own
run"), never decoded by the wrong generator.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import domains
from ..errors import USAGE, E4EError, MissingWeightsError
from ..images import IMAGE_SUFFIXES
from .outputs import DEFAULT_OUT, LATENT_SUFFIXES, ItemResult, check_domain_fits, expand_inputs, read_meta, refine_record

REFINED_SUFFIX = ".npz"  # a refined latent in one file: code + offsets + record


@dataclass
class Source:
    """A latent to edit: codes [n,512], a name for outputs, and the invert folder it came from."""

    name: str
    codes: np.ndarray
    origin: str
    invert_dir: Optional[Path] = None
    refine: Optional[dict] = None  # the HyperStyle record (meta.json "refine", or the .npz's own), if refined
    offsets_path: Optional[Path] = None  # a refined latent file: its offsets are in it

    @property
    def offsets_file(self) -> Optional[Path]:
        if self.refine is None:
            return None
        if self.offsets_path is not None:
            return self.offsets_path
        name = "tuned_generator.npz" if self.tuned else "weight_offsets.npz"
        return None if self.invert_dir is None else self.invert_dir / name

    @property
    def tuned(self) -> bool:
        """A PTI result (`e4e invert --refine pti`): decoded by its own tuned generator."""
        return self.refine is not None and self.refine.get("method") == "pti"

    @property
    def checkpoint_record(self) -> Optional[dict]:
        """What a plain latent's invert folder records of its checkpoint: {path, sha256, domain}
        (sha256 None for results made before it was recorded); None without a meta.json."""
        meta = read_meta(self.invert_dir)
        if meta is None or self.refine is not None:
            return None
        made = (meta.get("made_with") or {}).get("checkpoint") or {}
        return {"path": meta.get("checkpoint"), "sha256": made.get("sha256") if isinstance(made, dict) else None,
                "domain": meta.get("domain")}


def last_invert_sources(out: Path = DEFAULT_OUT) -> list[Path]:
    """The latents of the last `e4e invert` into `out` (its summary.json)."""
    summary = Path(out) / "summary.json"
    if not summary.is_file():
        raise E4EError(f"nothing to edit: no {summary} (run `e4e invert PHOTO` first, or name a photo or latent)")
    try:
        data = json.loads(summary.read_text())
        items = [i for i in data.get("items", []) if i.get("status") in ("ok", "skipped") and i.get("outdir")]
    except (ValueError, AttributeError):
        raise E4EError(f"{summary} is not a valid summary file: run `e4e invert` again") from None
    paths = [Path(i["outdir"]) / "latent.npy" for i in items]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise E4EError(f"the last invert into {out} produced no latents: run `e4e invert PHOTO` first")
    return paths


def domain_of_latent(path: Path, n_styles: int) -> Optional[str]:
    meta = read_meta(path.parent)
    if meta is not None:
        return meta.get("domain")
    return domains.guess_from_n_styles(n_styles)


def gather_sources(sources: list) -> tuple[list[tuple[Path, str]], list[ItemResult]]:
    """(path, kind) per source, kind 'latent', 'refined' (a .npz) or 'photo'; an `e4e invert`
    result folder is its latent.npy; unreadable names become failures. No sources: the latents of
    the last `e4e invert` into e4e-out."""
    if not sources:
        return [(p, "latent") for p in last_invert_sources(DEFAULT_OUT)], []
    items, failures = [], []
    expanded = []
    for s in sources:
        s = Path(s)
        if s.is_dir() and (s / "latent.npy").is_file() and (s / "meta.json").is_file():
            expanded.append(s / "latent.npy")  # an invert result folder: its latent, once
        else:
            expanded += expand_inputs([s], (*IMAGE_SUFFIXES, *LATENT_SUFFIXES, REFINED_SUFFIX))
    for p in expanded:
        suffix = p.suffix.lower()
        if suffix in LATENT_SUFFIXES:
            items.append((p, "latent"))
        elif suffix == REFINED_SUFFIX:
            items.append((p, "refined"))
        elif suffix in IMAGE_SUFFIXES or p.exists():
            items.append((p, "photo"))
        else:
            failures.append(ItemResult(str(p), "failed", error="no such file"))
    return items, failures


def read_source(path: Path, kind: str) -> Source:
    """The Source of a latent file, an invert folder's latent.npy or a refined latent file (.npz).
    Raises E4EError."""
    from ..editing import load_latent_file

    p = Path(path)
    if kind == "refined":
        from ..refine import load_refined_latent

        if not p.is_file():
            raise E4EError("no such file")
        code, record = load_refined_latent(p)
        if not record.get("refiner_sha256"):
            raise E4EError(f"{p} records no HyperStyle checkpoint (refiner_sha256): its offsets cannot be placed")
        return Source(p.stem, code, str(p), refine=record, offsets_path=p)
    arr = load_latent_file(p)
    name = p.resolve().parent.name if p.stem == "latent" else p.stem  # x/../latent.npy: the real folder's name
    inv = p.parent if (p.parent / "meta.json").is_file() else None
    rec = refine_record(inv) if p.stem == "latent" else None
    return Source(name, arr, str(p), inv, refine=rec)


@dataclass
class Decoder:
    """What a run decodes with (`model`), what inverts its photos (`inverter`, None: photos are
    refused) and the content every source must come from (a refiner's or a checkpoint's SHA-256)."""

    model: object
    inverter: Optional[object]
    refiner_sha256: Optional[str] = None
    checkpoint_sha256: Optional[str] = None
    photo_refusal: str = ""

    @property
    def refined(self) -> bool:
        return self.refiner_sha256 is not None

    def refuses(self, src: Source) -> Optional[str]:
        """Why `src` cannot be decoded in this run (one line), or None."""
        if self.refined != (src.refine is not None):
            return ("a HyperStyle-refined latent; this run decodes plain e4e latents: edit it in its own run"
                    if src.refine else
                    "a plain e4e latent; this run decodes HyperStyle-refined latents: edit it in its own run")
        if self.refined and _refine_key(src.refine) != self.refiner_sha256:
            return (f"refined with another HyperStyle checkpoint (SHA-256 {str(src.refine.get('refiner_sha256'))[:12]}...) "
                    "than this run's: edit it in its own run")
        rec = src.checkpoint_record
        if self.checkpoint_sha256 and rec and rec["sha256"] and rec["sha256"] != self.checkpoint_sha256:
            return (f"made with another checkpoint ({Path(str(rec['path'])).name}, SHA-256 {rec['sha256'][:12]}...) "
                    "than this run's: edit it in its own run, or pass --checkpoint to decode it with this one")
        return None


def choose_decoder(job, sources: list[Source]) -> Decoder:
    """The model of this run (see the module docstring). `job`: the EditJob."""
    refined = next((s.refine for s in sources if s.refine is not None), None)
    if refined is not None and refined.get("method") == "pti" and not job.refine:
        return _pti_decoder(job, refined)
    if job.refine or refined is not None:
        if job.checkpoint is not None:
            raise E4EError("--checkpoint is an e4e checkpoint; HyperStyle-refined latents are decoded by the "
                           "HyperStyle checkpoint that refined them (--generator decodes with another generator)",
                           exit_code=USAGE)
        if job.refine:
            hs = _refiner(job)
            return Decoder(hs.decoder, hs, refiner_sha256=hs.sha256())
        if job.domain is not None and job.domain != refined.get("domain"):
            raise E4EError(f"--domain {job.domain}: these latents were refined on {refined.get('domain')} images "
                           "(their record decides; leave --domain out)", exit_code=USAGE)
        return Decoder(refiner_decoder(refined, job), None, refiner_sha256=refined.get("refiner_sha256"),
                       photo_refusal="a photo among HyperStyle-refined latents: pass --refine hyperstyle to refine it "
                                     "too, or edit it in its own run")
    from ..model import ModelOptions, load_model

    opts = dict(device=job.device, precision=job.precision, weights_dir=job.weights_dir)
    if job.checkpoint is not None:  # the user's choice decodes everything
        model = load_model(ModelOptions(domain=job.domain, checkpoint=job.checkpoint, **opts))
        check_domain_fits(job.domain, model)
        return Decoder(model, model)
    rec = next((s.checkpoint_record for s in sources if s.checkpoint_record and s.checkpoint_record["path"]), None)
    path = recorded_checkpoint(rec, job.weights_dir) if rec else None
    if path is not None:
        model = load_model(ModelOptions(domain=job.domain, checkpoint=path, **opts))
        check_domain_fits(job.domain, model)
        if job.domain is None and rec.get("domain") in domains.DOMAINS and rec["domain"] != model.domain:
            model = model.with_domain(rec["domain"])  # the invert's --domain (noted when it inverted)
        return Decoder(model, model, checkpoint_sha256=rec.get("sha256"))
    domain = job.domain
    if domain is None:
        domain = next((domain_of_latent(Path(s.origin), s.codes.shape[0]) for s in sources), None)
    model = load_model(ModelOptions(domain=domain or domains.DEFAULT, **opts))
    return Decoder(model, model)


def recorded_checkpoint(rec: dict, weights_dir: Optional[Path]) -> Optional[Path]:
    """The file whose content is the checkpoint an invert folder records: the recorded path while
    its content is unchanged, else the domain's released file if it has that content. None for a
    record without a digest (older results) whose file is gone: the domain's file decodes, as before.
    MissingWeightsError (exit 3) when the recorded content is nowhere."""
    from ..digests import content_sha256

    path = Path(str(rec["path"]))
    want = rec.get("sha256")
    if path.is_file() and (want is None or content_sha256(path) == want):
        return path
    if want is None:
        return None
    if rec.get("domain") in domains.DOMAINS and domains.DOMAINS[rec["domain"]].checkpoint_asset:
        from ..weights.locate import asset_path

        released = asset_path(domains.DOMAINS[rec["domain"]].checkpoint_asset, weights_dir)
        if released.is_file() and content_sha256(released) == want:
            return released
    changed = "has changed" if path.is_file() else "is gone"
    raise MissingWeightsError(f"the latents were made with checkpoint {path} (SHA-256 {want[:12]}...), which {changed}: "
                              "pass --checkpoint FILE to decode them with another")


def _refine_key(record: dict) -> Optional[str]:
    """What a refined source must share with the run's other sources: the HyperStyle checkpoint's
    SHA-256, or for PTI results the base e4e checkpoint's (each has its own tuned generator)."""
    if record.get("method") == "pti":
        return f"pti:{record.get('base_sha256')}"
    return record.get("refiner_sha256")


def _pti_decoder(job, record: dict) -> Decoder:
    """The e4e model whose generator PTI results were tuned from (the recorded checkpoint, found by
    its SHA-256, or --checkpoint); each source's difference is applied to it when it is edited."""
    from ..model import ModelOptions, load_model

    if job.generator is not None:
        raise E4EError("--generator decodes with another generator; a PTI-tuned result carries its own "
                       "(tuned from its e4e checkpoint)", exit_code=USAGE)
    path = job.checkpoint
    if path is None:
        rec = {"path": record.get("checkpoint"), "sha256": record.get("base_sha256"), "domain": job.domain}
        path = recorded_checkpoint(rec, job.weights_dir)
    model = load_model(ModelOptions(domain=job.domain, checkpoint=path, device=job.device, precision=job.precision,
                                    weights_dir=job.weights_dir))
    check_domain_fits(job.domain, model)
    return Decoder(model, None, refiner_sha256=_refine_key(record),
                   photo_refusal="a photo among PTI-tuned latents: invert it with `e4e invert --refine pti` "
                                 "first, or edit it in its own run")


def _refiner(job):
    """The HyperStyle model `--refine hyperstyle` asks for (refines the photos, decodes everything)."""
    from ..refine import check_offsets_precision, load_refiner
    from ..weights.locate import refiner_files

    check_offsets_precision(job.offsets_precision)
    hs, we = refiner_files(job.domain, job.refiner, job.w_encoder, job.weights_dir)
    return load_refiner(domain=job.domain, refiner=hs, w_encoder=we, device=job.device, precision=job.precision,
                        weights_dir=job.weights_dir)


def refiner_decoder(record: dict, job):
    """The decode-only model of the HyperStyle checkpoint that refined the latents: the file it
    records if it is still there, else the domain's in the weights folder, as long as its content
    is the one recorded (offsets only mean something on the generator they were made for)."""
    from ..digests import content_sha256
    from ..refine import load_refiner
    from ..weights.locate import refiner_files

    recorded = Path(record.get("refiner") or "")
    refiner = recorded if recorded.is_file() and content_sha256(recorded) == record.get("refiner_sha256") else None
    w_encoder = Path(record["w_encoder"]) if refiner is not None and Path(record.get("w_encoder") or "").is_file() else None
    hs_path, we_path = refiner_files(record.get("domain") if refiner is None else None, refiner, w_encoder,
                                     job.weights_dir)
    hs = load_refiner(refiner=hs_path, w_encoder=we_path, device=job.device, precision=job.precision,
                      weights_dir=job.weights_dir)
    if hs.sha256() != record.get("refiner_sha256"):
        raise E4EError(f"the latents were refined with another HyperStyle checkpoint than {Path(hs.path).name} "
                       f"(SHA-256 {str(record.get('refiner_sha256'))[:12]}...): their offsets fit only that one's generator")
    return hs.decoder
