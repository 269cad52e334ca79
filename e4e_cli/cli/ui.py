"""`e4e ui`: serve the local editing page (an optional extra: pip install -e ".[ui]")."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import E4EError
from ..ui.limits import memory_bound_text
from . import options


def ui_command(
    checkpoint: Optional[Path] = options.checkpoint_option(),
    domain: Optional[str] = options.domain_option(),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (this machine only by default)."),
    port: int = typer.Option(7860, "--port"),
    no_browser: bool = typer.Option(False, "--no-browser", help="Do not open a browser."),
    latents: Optional[Path] = typer.Option(None, "--latents", help="An `e4e invert` output folder whose latents the page may open."),
    directions: Optional[Path] = typer.Option(None, "--directions", help="A folder of direction files (.npy/.pt) that get sliders, besides the weights folder's directions/."),
    precision: str = options.precision_option(),
    device: str = options.device_option(),
    weights_dir: Optional[Path] = options.weights_dir_option(),
    relevance: Optional[Path] = typer.Option(None, "--relevance", help="A relevance file for the text box "
                                             "(`e4e directions relevance`; faces default to styleclip_ffhq)."),
    refiner: Optional[Path] = typer.Option(None, "--refiner", help="A HyperStyle checkpoint for the page's refine switch "
                                           "(default: the domain's in the weights folder, when downloaded)."),
    w_encoder: Optional[Path] = typer.Option(None, "--w-encoder", help="The W-encoder it starts from."),
    token: Optional[str] = typer.Option(None, "--token",
                                        help="The page's secret, in the printed URL (default: $E4E_UI_TOKEN, else a new random "
                                             "one each launch; 16+ characters of A-Z a-z 0-9 . _ ~ -; '' is refused)."),
):
    from .. import settings
    from ..model import ModelOptions, load_model

    try:
        import fastapi  # noqa: F401  (present?)
        import uvicorn
    except ImportError:
        raise E4EError('e4e ui needs its extra: pip install -e ".[ui]" (fastapi, uvicorn, python-multipart)') from None
    from ..ui.launch import network_warning, open_in_browser, page_url, port_free, remove_open_file, write_open_file
    from ..ui.server import Editor, check_token, create_app, new_token

    if token is None:
        token = settings.ui_token()
    token = new_token() if token is None else check_token(token)
    options.check_domain(domain)
    if not 0 < port < 65536:
        raise E4EError(f"--port must be 1..65535, got {port}")
    if not port_free(host, port):
        raise E4EError(f"port {port} on {host} is in use (another e4e ui?): choose another with --port")
    if latents is not None and not latents.is_dir():
        raise E4EError(f"--latents {latents} is not a folder")
    if directions is not None and not directions.is_dir():
        raise E4EError(f"--directions {directions} is not a folder")
    model = load_model(ModelOptions(domain=domain, checkpoint=checkpoint, device=device, precision=precision,
                                    weights_dir=weights_dir))
    editor = Editor(model, weights_dir=weights_dir, latents_dir=latents, synthetic=_not_released(model),
                    directions_dir=directions, refiner_files=_refiner_files(model, refiner, w_encoder, weights_dir),
                    relevance=relevance)
    url = page_url(host, port, token)
    typer.echo(f"e4e ui: {url} ({model.domain}, {model.size}px; Ctrl-C stops it)")
    warning = network_warning(host)
    if warning:
        typer.echo(f"e4e ui: {warning}", err=True)
    opener = None
    try:
        if not no_browser:  # the browser gets a file that redirects: a URL argument would show the token in `ps`
            opener = write_open_file(url)
            open_in_browser(opener)
        _serve(uvicorn, create_app(editor, token=token, host=host, port=port), host=host, port=port)
    finally:
        if opener is not None:
            remove_open_file(opener)


# the help states the sessions' memory bound from the numbers the server uses
ui_command.__doc__ = ("A local page to edit a photo with sliders and a live preview (only for the URL it prints, with "
                      f"its token); {memory_bound_text()}.")


def _serve(uvicorn, app, *, host: str, port: int) -> None:
    """uvicorn.run, ended by Ctrl-C or SIGTERM through the caller's `finally` (uvicorn shuts down
    cleanly, then raises the signal again: SIGTERM's default would end the process on the spot)."""
    import signal

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, terminated)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        signal.signal(signal.SIGTERM, old)


def _not_released(model) -> bool:
    """True unless the checkpoint is the registry's released file (by name and size): synthetic
    and unknown checkpoints get a label on the page."""
    from ..domains import DOMAINS
    from ..weights.registry import ASSETS

    domain = DOMAINS.get(model.domain)
    asset = ASSETS.get(domain.checkpoint_asset) if domain else None
    path = Path(model.path or "")
    return not (asset and path.name == asset.filename and path.is_file() and path.stat().st_size == asset.size)


def _refiner_files(model, refiner: Optional[Path], w_encoder: Optional[Path], weights_dir) -> Optional[tuple]:
    """The HyperStyle pair for the page's refine switch: the files given (both must exist), else the
    domain's in the weights folder when both are there, else None (no switch on the page)."""
    from ..refine import find_refiner

    if refiner is None and w_encoder is None:
        try:
            return find_refiner(model.domain, weights_dir=weights_dir)
        except E4EError:  # not downloaded (MissingWeightsError), or not released for this domain
            return None
    if refiner is None or w_encoder is None:
        raise E4EError("--refiner and --w-encoder go together (the HyperStyle checkpoint and the W-encoder it starts from)")
    return find_refiner(model.domain, refiner=refiner, w_encoder=w_encoder, weights_dir=weights_dir)
