"""The generator's float32 up-sampling layers alone (issue 25): per-layer timings of the ways to
compute "stride-2 transposed 3x3 convolution, then the 4x4 blur", at the 1024 generator's
shapes, natively and limited to AVX2 (a child process with ATEN_CPU_CAPABILITY=avx2,
ONEDNN_MAX_CPU_ISA=AVX2):

- transpose: oneDNN's transposed convolution, then the depthwise blur (the fast path's float32 way);
- polyphase: one 3x3 convolution with 4*O outputs (the blur folded in), then the pixel shuffle;
- polyphase + Winograd: the same convolution by NNPACK's Winograd F(6x6,3x3);
- GEMM + col2im: the transposed convolution as one matrix product and `F.fold`, then the blur.

Each way is checked against the first (relative error printed); best of a few calls.

    python bench/bench_upsample.py [--isa avx2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from timing import best_of  # noqa: E402  (bench/timing.py)

SHAPES = [  # (input side, in channels, out channels): the 256, 512 and 1024 blocks' up-sampling convs
    (128, 256, 128), (256, 128, 64), (512, 64, 32)]


def best(fn):
    return best_of(fn, 5)


def run() -> dict:
    import torch
    import torch.nn.functional as F

    from e4e_cli.nn import ops
    from e4e_cli.nn.networks import blur_kernel_2d
    from e4e_cli.nn.runtime import configure_threads

    configure_threads()
    cl = torch.channels_last
    kernel = blur_kernel_2d(scale=4.0)
    out = {"aten": torch.backends.cpu.get_cpu_capability(), "layers": []}
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for side, cin, cout in SHAPES:
            x = torch.randn(1, cin, side, side, generator=g).contiguous(memory_format=cl)
            w = torch.randn(cout, cin, 3, 3, generator=g) / (cin * 9) ** 0.5  # [O,I,3,3]
            wt = w.transpose(0, 1).contiguous()  # [I,O,3,3] for conv_transpose2d
            poly = ops.polyphase_up_weight(w, kernel, phase_major=True).contiguous(memory_format=cl)  # [4O,I,3,3]

            def transpose():
                return ops.blur2d(F.conv_transpose2d(x, wt, stride=2), kernel)

            def polyphase():
                return ops.phase_shuffle_add(F.conv2d(x, poly, padding=1), None)

            def polyphase_winograd():
                return ops.phase_shuffle_add(ops.conv3x3(x, poly, impl="winograd"), None)

            ref = transpose()
            row = {"input": f"{cin}x{side}x{side}", "out_channels": cout}
            t_conv = best(lambda: F.conv_transpose2d(x, wt, stride=2))
            y0 = F.conv_transpose2d(x, wt, stride=2)
            t_blur = best(lambda: ops.blur2d(y0, kernel))
            flops = 2 * side * side * cin * cout * 9
            row["transpose_parts"] = {"conv_transpose_s": round(t_conv, 4), "blur_s": round(t_blur, 4),
                                      "conv_gflops": round(flops / t_conv / 1e9, 1)}
            for name, fn in (("transpose", transpose), ("polyphase", polyphase),
                             ("polyphase_winograd", polyphase_winograd), ("gemm_col2im", gemm_fold(x, w, kernel))):
                try:
                    y = fn()
                    err = float((y.float() - ref).norm() / ref.norm())
                    row[name] = {"s": round(best(fn), 4), "rel_err": float(f"{err:.2e}")}
                except Exception as exc:  # noqa: BLE001
                    row[name] = f"failed: {type(exc).__name__}: {exc}"
            out["layers"].append(row)
    return out


def gemm_fold(x, w, kernel):
    """The transposed convolution as cols = W^T X ([O*9, H*W]) folded with stride 2, then the blur."""
    import torch
    import torch.nn.functional as F

    from e4e_cli.nn import ops

    n, cin, h, wd = x.shape
    cout = w.shape[0]
    # conv_transpose2d(x, wt, stride=2): out[o, 2q+a, 2p+b] += sum_i w[o,i,a,b] x[i,q,p]
    wcol = w.permute(0, 2, 3, 1).reshape(cout * 9, cin).contiguous()  # [(o,a,b), i]
    xs = x.contiguous().reshape(cin, h * wd)  # [I, H*W]

    def fn():
        cols = torch.mm(wcol, xs)  # [O*9, H*W]
        y = F.fold(cols[None], output_size=(2 * h + 1, 2 * wd + 1), kernel_size=3, stride=2)
        return ops.blur2d(y, kernel)
    return fn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", choices=["avx2"], help="run limited to AVX2 in a child process")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.isa and not args.child:
        env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
        p = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True)
        print(p.stdout, end="")
        return p.returncode
    print(json.dumps(run(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
