"""Shared test helpers: where the parity fixtures live and how to drive the installed CLI."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# `make test` runs two pytest-xdist workers on the machine's cores: one thread each, and the same
# for the processes they start (two-thread OpenMP teams sharing two cores with another worker
# spend most of their time waiting for each other: a training test took 7x longer)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

from e4e_cli import synthetic  # noqa: E402
from e4e_cli.synthetic import parity_available  # noqa: E402

ROOT = synthetic.ROOT
PARITY = synthetic.parity_dir()


REQUIRE_PARITY = os.environ.get("E4E_REQUIRE_PARITY", "") not in ("", "0")

# the tests' derived data (file digests, W statistics) never goes to the user's cache folder
os.environ.setdefault("E4E_CACHE_DIR", tempfile.mkdtemp(prefix="e4e-test-cache-"))


def _no_parity() -> None:
    """Skip a parity test where the fixtures are absent; fail it where they are required
    (E4E_REQUIRE_PARITY=1, which .ci/run sets: CI never passes by skipping them)."""
    msg = (f"parity fixtures not available: {PARITY} is absent (they are the shared/parity folder laid "
           f"beside the checkout for developers and CI, or any folder named by E4E_PARITY_DIR)")
    if REQUIRE_PARITY:
        pytest.fail(msg + " and E4E_REQUIRE_PARITY=1 requires them", pytrace=False)
    pytest.skip(msg)


# ---------------------------------------------------------------------------------------------
# Which tests use the fixtures. .ci/run records them in its main run (E4E_RECORD_FIXTURE_USERS=FILE)
# and runs exactly those again with the fixtures hidden (E4E_ONLY_TESTS=FILE): each must skip (or
# pass), never error, as in a user's clone with no ../shared beside it. A test counts as a user
# when it asks for a fixture built on `parity_dir`, calls this file's checkpoint builders, or
# opens or hands a child process a path under the fixtures or the checkpoints built from them:
# found by what it does, so a test that reads the folder directly is not missed.

# Under pytest-xdist (`make test` runs two workers) the controller hands the file name to its
# workers under another name; each worker records into FILE.<worker> and the controller merges them.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER:
    _RECORD = os.environ.pop("E4E_RECORD_FIXTURE_USERS_WORKERS", "")
    _ONLY = os.environ.pop("E4E_ONLY_TESTS_WORKERS", "")
else:
    _RECORD = os.environ.pop("E4E_RECORD_FIXTURE_USERS", "")  # popped: pytest runs that tests start are not recorded
    _ONLY = os.environ.pop("E4E_ONLY_TESTS", "")
    if _RECORD:
        os.environ["E4E_RECORD_FIXTURE_USERS_WORKERS"] = _RECORD
    if _ONLY:
        os.environ["E4E_ONLY_TESTS_WORKERS"] = _ONLY
_users: set = set()
_current: list = []  # [nodeid] while a test is set up, run or torn down


def _fixture_used() -> None:
    if _current:
        _users.add(_current[0])


def _watch(event: str, args) -> None:
    if not _current or _current[0] in _users or event not in ("open", "subprocess.Popen", "os.listdir", "os.scandir"):
        return
    items = args[1] if event == "subprocess.Popen" else args[:1]
    for a in items or ():
        if isinstance(a, (str, os.PathLike)) and any(os.fspath(a).startswith(root) for root in _WATCHED):
            _users.add(_current[0])
            return


if _RECORD:
    _WATCHED = tuple(os.fspath(p) for p in (PARITY, synthetic.cache_dir()))
    sys.addaudithook(_watch)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[:] = [item.nodeid]
    if "parity_dir" in getattr(item, "fixturenames", ()):
        _fixture_used()
    yield
    _current.clear()


def pytest_collection_modifyitems(session, config, items):
    if not _ONLY:
        return
    wanted = set(Path(_ONLY).read_text().split("\n")) - {""}
    keep = [i for i in items if i.nodeid in wanted]
    config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in wanted])
    items[:] = keep
    missing = wanted - {i.nodeid for i in keep}
    if missing:
        raise pytest.UsageError(f"{len(missing)} recorded fixture tests were not collected, e.g. {sorted(missing)[0]}")


def pytest_sessionfinish(session, exitstatus):
    if not _RECORD:
        return
    if _WORKER:
        Path(f"{_RECORD}.{_WORKER}").write_text("".join(f"{n}\n" for n in sorted(_users)))
        return
    parts = sorted(Path(_RECORD).parent.glob(Path(_RECORD).name + ".gw*"))
    for part in parts:
        _users.update(n for n in part.read_text().split("\n") if n)
        part.unlink()
    Path(_RECORD).write_text("".join(f"{n}\n" for n in sorted(_users)))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not parity_available():
        _no_parity()
    return PARITY


def e4e_executable() -> str:
    """The installed console script (tests drive the real CLI, as a user would)."""
    cand = Path(sys.executable).parent / "e4e"
    if cand.exists():
        return str(cand)
    found = shutil.which("e4e")
    if not found:
        pytest.skip("the e4e console script is not installed (run `make install`)")
    return found


HOOKS = Path(__file__).resolve().with_name("run_with_hooks.py")


def sigint_default() -> None:
    """preexec_fn for a child that is sent SIGINT: Ctrl-C's default action, as a terminal gives it,
    even when the test run was started in the background (a shell's background job ignores SIGINT,
    children inherit that, and Python then never raises KeyboardInterrupt)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_e4e(*args, when: Path, wait_s: float = 120) -> subprocess.CompletedProcess:
    """Run `e4e ARGS...`, send it Ctrl-C (SIGINT) as soon as the file `when` exists (or after
    `wait_s`), and return the completed process (text mode; never left running)."""
    import signal
    import time

    env = dict(os.environ, E4E_NO_PROGRESS="1")
    env.pop("E4E_DEBUG", None)
    proc = subprocess.Popen([e4e_executable(), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=sigint_default)
    deadline = time.time() + wait_s
    while time.time() < deadline and not Path(when).exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never leave the process behind when the test fails
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def noise_photo(path: Path, seed: int = 0, side: int = 64) -> Path:
    """A photo of uniform noise (no face anywhere), written to `path`."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.RandomState(seed).rand(side, side, 3) * 255).astype("uint8")).save(path)
    return path


def run_e4e(*args, cwd=None, env=None, timeout=600, input=None, hooks=None) -> subprocess.CompletedProcess:
    """Run `e4e ARGS...` and return the completed process (text mode, never raises). `hooks`
    (e.g. ["--kill-after-shards", "2"]) runs it through tests/run_with_hooks.py instead."""
    full_env = dict(os.environ)
    full_env.pop("E4E_DEBUG", None)
    full_env.setdefault("E4E_NO_PROGRESS", "1")
    if env:
        full_env.update(env)
    cmd = [sys.executable, str(HOOKS), *map(str, hooks), "--"] if hooks else [e4e_executable()]
    return subprocess.run(
        [*cmd, *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> None:
    """A failed command's reason is exactly one line, `e4e: error: <reason>`, the last line on
    stderr (progress lines may come before it), mentioning every needle (case-insensitive); no
    traceback; a non-zero exit (`code` if given)."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    if code is not None:
        assert proc.returncode == code, (proc.returncode, out)
    assert "Traceback" not in out, out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("e4e: error:")]
    assert len(errors) == 1, f"want one 'e4e: error:' line, got: {proc.stderr!r}"
    assert lines[-1] == errors[0], f"the error line must close stderr (progress may come before it): {proc.stderr!r}"
    for needle in needles:
        assert needle.lower() in errors[0].lower(), (needle, proc.stderr)


def synthetic_checkpoint(size: int, seed: int, domain: str) -> Path:
    """Build (once, cached under .cache/) a synthetic checkpoint in the released format."""
    _fixture_used()
    if not parity_available():
        _no_parity()
    return synthetic.synthetic_checkpoint(size, seed, domain)


CASES = {"ffhq_1024_s1": (1024, 1, "ffhq"), "cars_512_s2": (512, 2, "cars"), "church_256_s3": (256, 3, "church")}


@pytest.fixture(scope="session")
def case_checkpoint():
    """case name -> path of its synthetic checkpoint."""
    return lambda name: synthetic_checkpoint(*CASES[name])


@pytest.fixture(scope="session")
def church(case_checkpoint):
    """The synthetic church 256 checkpoint: the quickest full-size model."""
    return case_checkpoint("church_256_s3")


#: HyperStyle parity cases (parity/hyperstyle/cases): size, seed, domain, layers_to_tune of the synthetic pair
HYPERSTYLE_CASES = {"ffhq_1024_s1": (1024, 1, "ffhq", synthetic.HYPERSTYLE_RELEASE_LAYERS),
                    "cars_512_s2": (512, 2, "cars", "")}


def hyperstyle_checkpoints(name: str) -> tuple[Path, Path]:
    """(HyperStyle checkpoint, W-encoder) of a parity case, built once (about 10 s, 3 GB) and cached."""
    _fixture_used()
    if not (parity_available() and (PARITY / "hyperstyle" / "make_hyperstyle.py").is_file()):
        _no_parity()
    return synthetic.synthetic_hyperstyle(*HYPERSTYLE_CASES[name])


class RunsCode:
    """Unpickling this would run `touch marker`: a stand-in for a hostile checkpoint or pickle.
    Tests assert the marker never appears."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny_generator(size=32, dtype=None, seed=1, *, style_dim=16, channels=None, noise=0.1):
    """A small StyleGAN2 generator (16-d styles by default) with the checkpoint's conventions for
    the modulation bias (1) and a noise strength (0.1 by default), for tests of the ops, the
    fast paths and training."""
    import torch

    from e4e_cli.nn.networks import Generator

    torch.manual_seed(seed)
    g = Generator(size, style_dim=style_dim, n_mlp=2, channels=channels or {4: 16, 8: 12, 16: 8, 32: 8, 64: 4})
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("modulation.bias"):
                p.fill_(1.0)
            elif name.endswith("noise.weight"):
                p.fill_(noise)
    return g.to(dtype or torch.float32).eval()


# ---------------------------------------------------------------------------------------------
# e4e train (issue 21): synthetic loss-network weight files in their released layouts


@pytest.fixture(scope="session")
def lossnet_weights(parity_dir, tmp_path_factory) -> Path:
    """A weights folder holding LPIPS-alex (AlexNet + linear layers), IR-SE50 and MoCo-v2 files
    written once per session by the parity fixtures' deterministic writer (seed 1, legacy
    torch.save format as released), under the project's asset file names."""
    out = tmp_path_factory.mktemp("lossnets")
    script = Path(parity_dir) / "lossnets" / "make_lossnets.py"
    proc = subprocess.run([sys.executable, str(script), "--seed", "1", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (out / "alex.pth").rename(out / "lpips_alex_v0.1.pth")  # the asset name of LPIPS's alex.pth
    return out


@pytest.fixture(scope="session")
def lpips_dir(parity_dir, tmp_path_factory) -> Path:
    """A weights folder holding only LPIPS-alex's two files (the parity fixtures' writer, seed 1)."""
    out = tmp_path_factory.mktemp("pti-lpips")
    script = Path(parity_dir) / "lossnets" / "make_lossnets.py"
    for only in ("alexnet", "lpips_alex"):
        proc = subprocess.run([sys.executable, str(script), "--seed", "1", "--only", only, str(out)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    (out / "alex.pth").rename(out / "lpips_alex_v0.1.pth")
    return out


@contextlib.contextmanager
def serve_page(editor):
    """`e4e ui`'s app for `editor` on a free loopback port, in a thread: yields (url, token,
    client), the client sending the token and the page's Origin as a script may."""
    import socket
    import threading
    import time

    import requests
    import uvicorn

    from e4e_cli.ui.server import create_app, new_token

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = new_token()
    srv = uvicorn.Server(uvicorn.Config(create_app(editor, token=token, host="127.0.0.1", port=port),
                                        host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    http = requests.Session()
    http.headers.update({"Authorization": f"token {token}", "Origin": url})
    try:
        for _ in range(100):
            try:
                requests.get(url + "/api/info", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield url, token, http
    finally:
        srv.should_exit = True
        thread.join(timeout=10)

