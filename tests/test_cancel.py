"""A decode stopped between blocks (issue 25): `should_stop` is asked before each up-sampling
block of the reference and the fast path, and a True answer raises `errors.Cancelled` there,
before the next block runs. Tiny generators keep this quick."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from conftest import tiny_generator
from e4e_cli.errors import Cancelled, E4EError
from e4e_cli.nn import fast_generator
from e4e_cli.nn.engine import FastOptions, Plans


def _blocks_run(g):
    """A list that grows by one resolution per up-sampling block that finishes."""
    ran = []
    hooks = [rgb.register_forward_hook(lambda m, a, out: ran.append(out.shape[-1])) for rgb in g.to_rgbs]
    return ran, hooks


def _after(n):
    """A should_stop that says stop from its (n+1)-th question on; counts the questions."""
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > n
    return should_stop, asked


def test_the_reference_stops_before_the_next_block():
    g = tiny_generator(size=64)
    codes = torch.randn(2, g.n_styles, 16)
    ran, hooks = _blocks_run(g)
    stop, asked = _after(1)
    try:
        with torch.no_grad(), pytest.raises(Cancelled):
            g.synthesize(codes, should_stop=stop)
    finally:
        for h in hooks:
            h.remove()
    assert ran == [8] and len(asked) == 2  # the 8 block ran, the 16 block did not start


@pytest.mark.parametrize("mode", ["auto", "activation", "weight"])
@pytest.mark.parametrize("batch", [1, 2])
def test_the_fast_path_stops_before_the_next_block(mode, batch, monkeypatch):
    """Low resolutions (whole batch) and high ones (one sample at a time) both ask at each block."""
    g = tiny_generator(size=64)
    codes = torch.randn(batch, g.n_styles, 16)
    ran = []
    inner = fast_generator._to_rgb_fast

    def record(st, x, s, skip, cdt):
        ran.append(x.shape[-1])
        return inner(st, x, s, skip, cdt)

    monkeypatch.setattr(fast_generator, "_to_rgb_fast", record)
    opts = FastOptions(mode=mode)
    with torch.no_grad():
        fast_generator.synthesize(g, codes, options=opts, plans=Plans(), should_stop=lambda: False)
        full = list(ran)
        for n in range(len(g.to_rgbs)):
            ran.clear()
            stop, asked = _after(n)
            with pytest.raises(Cancelled):
                fast_generator.synthesize(g, codes, options=opts, plans=Plans(), should_stop=stop)
            assert ran == full[:len(ran)] and max(ran) == 4 * 2 ** n, (n, ran)  # stopped right after block n
    assert full[-1] == 64


def test_never_stopping_changes_nothing():
    g = tiny_generator(size=64)
    codes = torch.randn(2, g.n_styles, 16)
    with torch.no_grad():
        assert torch.equal(g.synthesize(codes, should_stop=lambda: False), g.synthesize(codes))
        plans = Plans()
        assert torch.equal(fast_generator.synthesize(g, codes, plans=plans, should_stop=lambda: False),
                           fast_generator.synthesize(g, codes, plans=plans))


def test_cancelled_is_not_a_user_error():
    assert not issubclass(Cancelled, E4EError)


@pytest.mark.slow
def test_a_full_decode_stops_promptly_from_another_thread(case_checkpoint):
    """E4E.decode given a threading.Event that another thread sets once the first block has run
    (what a newer request of the page does): Cancelled comes at the next block boundary, long
    before the largest blocks (most of the work) would have run."""
    from e4e_cli.model import E4E

    model = E4E.from_checkpoint(case_checkpoint("ffhq_1024_s1"), device="cpu", precision="fp32")
    codes = model.latent_avg[None].clone()
    n_blocks = len(model.generator.to_rgbs)
    cancel, first, asked, result = threading.Event(), threading.Event(), [], {}

    def should_stop():
        asked.append(1)
        first.set()
        return cancel.is_set()

    def run():
        try:
            result["image"] = model.decode(codes, should_stop=should_stop)
        except Cancelled:
            result["cancelled"] = time.perf_counter()

    worker = threading.Thread(target=run)
    worker.start()
    assert first.wait(timeout=120)
    t_set = time.perf_counter()
    cancel.set()
    worker.join(timeout=120)
    assert "cancelled" in result, "the decode ran to its end"
    assert len(asked) < n_blocks // 2, f"stopped only before block {len(asked)} of {n_blocks}"
    t0 = time.perf_counter()
    model.decode(codes)
    assert result["cancelled"] - t_set < time.perf_counter() - t0  # sooner than a whole decode
    with pytest.raises(Cancelled):
        model.decode(codes, should_stop=cancel)  # an Event works as is
