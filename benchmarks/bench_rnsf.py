"""Benchmark: fast RNSF loss vs the literal N x M reference (prints numbers, asserts nothing).

At the paper's size the projector map is 88 x 188 x 64 (N = 16,544 pixels, batch 1) and
K = 250. Each variant runs in a fresh subprocess so that its peak resident memory
(``benchmarks.measure.peak_rss_mib``; on CUDA ``torch.cuda.max_memory_allocated``) is its own; a "baseline"
subprocess that only builds the inputs gives the memory to subtract.

    python benchmarks/bench_rnsf.py                # paper size (the literal reference needs several GB)
    python benchmarks/bench_rnsf.py --size 0.5     # h, w scaled by 0.5 (N / 4)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import emit, peak_rss_mib, run_child, set_threads  # noqa: E402

PAPER_H, PAPER_W, PAPER_D = 88, 188, 64


def _parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=float, default=1.0, help="scale of h and w (1.0 = 88 x 188)")
    ap.add_argument("--dim", type=int, default=PAPER_D, help=f"projection channels D (default: {PAPER_D})")
    ap.add_argument("--batch", type=int, default=1, help="batch items per view (default: 1)")
    ap.add_argument("--k", type=int, default=250, help="negatives per class K (default: 250)")
    ap.add_argument("--mode", default="reliable", choices=["reliable", "random", "mean"],
                    help="negative selection (default: reliable)")
    ap.add_argument("--repeats", type=int, default=5, help="timed forward+backward runs of the fast loss")
    ap.add_argument("--ref-repeats", type=int, default=1, help="timed runs of the reference")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--variant", choices=["baseline", "fast", "reference"], help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _peak_mib(device) -> float:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return peak_rss_mib()


def _child(args: argparse.Namespace) -> None:
    import torch
    from networks.rnsf import rnsf_loss
    from tests.rnsf_reference import rnsf_loss_reference

    threads = set_threads(args.threads)
    device = torch.device(args.device)
    h, w = max(2, round(PAPER_H * args.size)), max(2, round(PAPER_W * args.size))
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.dim, h, w)
    projs = [torch.randn(*shape, generator=g).to(device).requires_grad_() for _ in range(3)]
    maps = [(torch.randn(args.batch, 2, h, w, generator=g) * 2).to(device) for _ in range(2)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)
    result = {"variant": args.variant, "n": args.batch * h * w, "h": h, "w": w,
              "threads": threads, "times": []}
    if args.variant != "baseline":
        fn = rnsf_loss if args.variant == "fast" else rnsf_loss_reference
        repeats = args.repeats if args.variant == "fast" else args.ref_repeats
        for _ in range(max(1, repeats)):
            for p in projs:
                p.grad = None
            sync()
            start = time.perf_counter()
            loss = fn(projs[0], projs[1], maps[0], projs[2], maps[1], temperature=0.1, k=args.k,
                      mode=args.mode, generator=torch.Generator().manual_seed(1))
            loss.backward()
            sync()
            result["times"].append(time.perf_counter() - start)
            result["loss"] = loss.item()
            result["grad_norm"] = sum(p.grad.double().norm().item() ** 2 for p in projs) ** 0.5
            del loss
    result["peak_mib"] = _peak_mib(device)
    emit(result)


def _run_variant(args: argparse.Namespace, variant: str) -> dict:
    argv = ["--variant", variant, "--size", str(args.size), "--dim", str(args.dim), "--batch", str(args.batch),
            "--k", str(args.k), "--mode", args.mode, "--repeats", str(args.repeats),
            "--ref-repeats", str(args.ref_repeats), "--device", args.device, "--threads", str(args.threads)]
    result = run_child(Path(__file__).resolve(), argv)
    if "error" in result:
        print(f"[{variant}] failed: {result['error']}")
        return {}
    return result


def main(argv=None) -> None:
    args = _parse(argv)
    if args.variant:
        _child(args)
        return
    results = {v: _run_variant(args, v) for v in ("baseline", "fast", "reference")}
    base, fast, ref = results["baseline"], results["fast"], results["reference"]
    if not base:
        return
    print(f"RNSF benchmark: map {base['h']} x {base['w']} x {args.dim}, batch {args.batch} "
          f"(N = {base['n']}), K = {args.k}, mode {args.mode}, device {args.device}, "
          f"{base['threads']} torch threads")
    print(f"baseline (inputs only) peak: {base['peak_mib']:.1f} MiB")
    rows = {}
    for name, r in (("fast", fast), ("reference", ref)):
        if not r:
            continue
        t_first, t_med = r["times"][0], statistics.median(r["times"][1:] or r["times"])
        extra = r["peak_mib"] - (base["peak_mib"] if args.device == "cpu" else 0.0)
        rows[name] = (t_med, extra)
        print(f"{name:>9}: forward+backward first {t_first * 1e3:9.1f} ms, median {t_med * 1e3:9.1f} ms "
              f"({len(r['times'])} runs); peak {r['peak_mib']:8.1f} MiB, above baseline {extra:8.1f} MiB; "
              f"loss {r['loss']:.6f}, |grad| {r['grad_norm']:.6e}")
    if len(rows) == 2:
        (tf, mf), (tr, mr) = rows["fast"], rows["reference"]
        print(f"speed-up (reference / fast time): {tr / tf:.1f}x   (target >= 50x)")
        print(f"memory ratio (fast / reference, above baseline): {mf / mr:.4f}   (target <= 0.05); "
              f"raw peaks: {fast['peak_mib'] / ref['peak_mib']:.4f}")
        print(f"loss difference |fast - reference|: {abs(fast['loss'] - ref['loss']):.3e}")


if __name__ == "__main__":
    main()
