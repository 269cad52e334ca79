"""`e4e directions`: the editing directions, what they do, and whether their files are present."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


from . import options


def directions_command(
    weights_dir: Optional[Path] = options.weights_dir_option(),
):
    """List the editing directions: presets, what they do, and whether their files are present."""
    from rich.console import Console
    from rich.table import Table

    from ..weights.locate import asset_path
    from ..editing import PRESETS

    table = Table(title="Editing directions")
    for col in ("direction", "domain", "kind", "default strength", "what it does", "file"):
        table.add_column(col)
    for p in PRESETS.values():
        path = asset_path(p.asset, weights_dir)
        present = "present" if path.is_file() else "missing: e4e download-weights directions"
        table.add_row(p.name, p.domain, p.kind, f"{p.strength:g}", p.description, present)
    table.add_row("FILE.pt / FILE.npy", "any", "interfacegan", "(required)", "your own [512], [n,512] or [1,n,512] direction", "")
    table.add_row("ganspace:C:START:END", "ffhq, cars", "ganspace", "(required)", "any of the 80 PCA components on layers START..END-1 (strength = target coordinate)", "PCA file")
    table.add_row("sefa:K[:LAYERS]", "any", "sefa", "3", "K-th closed-form direction of the generator (SeFa); LAYERS e.g. 0-3", "from the checkpoint")
    Console().print(table)
