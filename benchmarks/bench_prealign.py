"""Benchmark of the affine pre-alignment (dataloaders.prealignment) on a paper-sized synthetic set (73 patients x 4 images, 740 x 350).

    python benchmarks/bench_prealign.py [--patients 73] [--images 4] [--size 740 350] [--workers 2]
                                        [--source demo|affine] [--keep DIR]

Sources: ``demo`` (default) = utils.synthetic.generate patients (affine + small elastic field +
illumination changes); ``affine`` = a textured canvas seen through random affines only.
Prints: pairs, seconds (cold cache), pairs/s, fallbacks, mean correlation, warm-cache
seconds, single-pair time, and the displacement error (pixels) against the true
correspondence map, next to that of the best least-squares affine fit to it (zero for
the ``affine`` source; the elastic misfit for ``demo``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders.dataset import DatasetFolder  # noqa: E402
from dataloaders.prealignment import cache as prealign  # noqa: E402
from dataloaders.prealignment.estimation import estimate_affine  # noqa: E402


def homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def random_affine(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Inverse-map affine about the centre: rotation +-5 deg, scale +-5 %, shear +-0.03, shift +-5 %."""
    a = np.deg2rad(rng.uniform(-5, 5))
    linear = rng.uniform(0.95, 1.05) * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) \
        @ np.array([[1.0, rng.uniform(-0.03, 0.03)], [0.0, 1.0]])
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    shift = rng.uniform(-0.05, 0.05, 2) * np.array([width, height])
    return np.hstack([linear, (centre + shift - linear @ centre)[:, None]])


def affine_patient(rng: np.random.Generator, size: tuple[int, int], count: int) -> dict:
    """Textured canvas (bright stripes on smooth noise) seen through ``count`` random affines."""
    width, height = size
    pad = int(0.2 * max(width, height))
    ch, cw = height + 2 * pad, width + 2 * pad
    x = np.arange(cw, dtype=np.float32)[None, :]
    y = np.arange(ch, dtype=np.float32)[:, None]

    def smooth(sigma: float) -> np.ndarray:
        noise = cv2.GaussianBlur(rng.standard_normal((ch, cw)).astype(np.float32), (0, 0), sigma)
        return noise / (noise.std() + 1e-8)

    phase = 2 * np.pi * (x + 15 * smooth(40)) / rng.uniform(20, 35)
    band = np.exp(-((y - ch / 2) / (0.3 * height)) ** 2)
    canvas = 0.6 * band * np.clip(np.sin(phase), 0, None) ** 2 + 0.1 * smooth(25) + 0.3 * band
    canvas = 0.1 + 0.7 * (canvas - canvas.min()) / (canvas.max() - canvas.min())  # no clipping below
    crop = np.array([[1.0, 0.0, pad], [0.0, 1.0, pad]])
    images, matrices = [], []
    for _ in range(count):
        matrix = random_affine(rng, width, height)
        view = cv2.warpAffine(canvas, (homogeneous(crop) @ homogeneous(matrix))[:2], (width, height),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        view = rng.uniform(0.8, 1.2) * view + rng.uniform(-0.05, 0.05) \
            + 0.02 * rng.standard_normal(view.shape).astype(np.float32)
        images.append(np.clip(view, 0, 1).astype(np.float32))
        matrices.append(matrix)
    return {"images": images, "masks": [(im > 0.5).astype(np.uint8) for im in images], "matrices": matrices}


def make_dataset(root: Path, source: str, patients: int, count: int, size: tuple[int, int],
                 ) -> tuple[list[list[str]], dict[tuple[str, str], np.ndarray]]:
    """Write ``root/Image`` and ``root/Label``; return the groups and, per ordered pair
    ``(moving, fixed)``, the true correspondence map on the error grid (:func:`true_map`)."""
    (root / "Image").mkdir(parents=True, exist_ok=True)
    (root / "Label").mkdir(parents=True, exist_ok=True)
    if source == "demo":
        from utils.synthetic.generate import generate_patient, patient_rng
        make = lambda p: generate_patient(patient_rng(0, p), size, count)  # noqa: E731
    else:
        make = lambda p: affine_patient(np.random.default_rng([1, p]), size, count)  # noqa: E731
    groups, truth = [], {}
    for p in range(1, patients + 1):
        data = make(p)
        names = [f"P{p:03d}_{k}" for k in range(1, count + 1)]
        for name, image, mask in zip(names, data["images"], data["masks"]):
            cv2.imwrite(str(root / "Image" / f"{name}.png"), np.round(image * 255).astype(np.uint8))
            cv2.imwrite(str(root / "Label" / f"{name}.png"), mask * np.uint8(255))
        for i, fixed in enumerate(names):
            for j, moving in enumerate(names):
                if i != j:
                    truth[(moving, fixed)] = true_map(data, i, j, size)
        groups.append(names)
    return groups, truth


STEP = 5  # grid spacing (pixels) on which errors are measured


def true_map(data: dict, fixed: int, moving: int, size: tuple[int, int]) -> np.ndarray:
    """Moving-image pixel ``[2, h, w]`` (x, y) shown at each fixed-image grid point ``p``.

    Pure affines: ``A_moving^-1 A_fixed p``. Demo patients also undo the elastic fields
    (``demo_geometry.pair_maps``, evaluated on the grid only)."""
    width, height = size
    ys, xs = np.mgrid[0:height:STEP, 0:width:STEP].astype(np.float64)
    if "fields" not in data:
        m = np.linalg.solve(homogeneous(data["matrices"][moving]), homogeneous(data["matrices"][fixed]))
        return np.stack([m[0, 0] * xs + m[0, 1] * ys + m[0, 2], m[1, 0] * xs + m[1, 1] * ys + m[1, 2]])
    from utils.synthetic.geometry import canonical_to_view, view_to_canonical
    sx, sy = view_to_canonical(data["matrices"][fixed], data["fields"][fixed])
    mx, my = canonical_to_view(data["matrices"][moving], data["fields"][moving],
                               sx[::STEP, ::STEP], sy[::STEP, ::STEP])
    return np.stack([mx, my]).astype(np.float64)


def errors(pre: prealign.Prealignment, truth: dict[tuple[str, str], np.ndarray]) -> dict[str, np.ndarray]:
    """Per pair, against the true map on the grid: mean / max displacement error (px) of the
    estimate, and the mean error of the best (least-squares) affine, which is the floor
    an affine can reach when the truth is not affine."""
    height, width = pre.size
    ys, xs = np.mgrid[0:height:STEP, 0:width:STEP]
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    out: dict[str, list] = {"mean": [], "max": [], "floor": []}
    for (moving, fixed), target in truth.items():
        target = target.reshape(2, -1)
        diff = np.linalg.norm(pre.matrix(moving, fixed) @ points - target, axis=0)
        best = np.linalg.lstsq(points.T, target.T, rcond=None)[0].T
        out["mean"].append(diff.mean())
        out["max"].append(diff.max())
        out["floor"].append(np.linalg.norm(best @ points - target, axis=0).mean())
    return {key: np.array(value) for key, value in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=73, help="synthetic patients (default: 73)")
    parser.add_argument("--images", type=int, default=4, help="images per patient (default: 4)")
    parser.add_argument("--size", type=int, nargs=2, default=(740, 350), metavar=("W", "H"),
                        help="image size (default: 740 350)")
    parser.add_argument("--workers", type=int, default=2, help="pre-alignment worker processes (default: 2)")
    parser.add_argument("--source", choices=("demo", "affine"), default="demo",
                        help="demo: utils.synthetic.generate patients (affine + elastic + illumination); "
                             "affine: a textured canvas seen through random affines only (default: demo)")
    parser.add_argument("--keep", type=Path, default=None, help="write the dataset here and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep if args.keep is not None else Path(tmp) / "data"
        start = time.perf_counter()
        groups, truth = make_dataset(root, args.source, args.patients, args.images, tuple(args.size))
        print(f"dataset ({args.source}): {args.patients} patients x {args.images} images at "
              f"{args.size[0]}x{args.size[1]}, generated in {time.perf_counter() - start:.1f} s")
        cache = root / prealign.CACHE_NAME
        if cache.exists():
            cache.unlink()
        folder = DatasetFolder(root)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            pre = prealign.ensure_prealignment(folder, groups, workers=args.workers, progress=False)
            cold = time.perf_counter() - start
        start = time.perf_counter()
        warm = prealign.ensure_prealignment(folder, groups, workers=args.workers, progress=False)
        warm_s = time.perf_counter() - start
        assert not warm.computed

        pairs = len(pre.computed)
        fallbacks = sum(not pre.ok(*pair) for pair in pre.computed)
        corr = np.array([pre.correlation(*pair) for pair in pre.computed])
        print(f"pairs {pairs}  workers {args.workers}  seconds {cold:.1f}  pairs/s {pairs / cold:.1f}  "
              f"fallbacks {fallbacks} ({len(caught)} warnings)  mean correlation {corr.mean():.4f} "
              f"(min {corr.min():.4f})")
        print(f"warm cache (nothing recomputed): {warm_s:.2f} s")

        a, b = groups[0][0], groups[0][1]
        moving, fixed = folder.load_image(a), folder.load_image(b)
        cv2.setNumThreads(1)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            estimate_affine(moving, fixed)
            times.append(time.perf_counter() - start)
        cpu = time.process_time()
        for _ in range(5):
            estimate_affine(moving, fixed)
        cpu = (time.process_time() - cpu) / 5
        print(f"single pair {a} -> {b} (1 thread, incl. smoothing + pyramid of both images): "
              f"median {1000 * np.median(times):.0f} ms wall, {1000 * cpu:.0f} ms CPU")

        err = errors(pre, truth)
        print(f"error vs the true map (on a {STEP}-px grid): mean {err['mean'].mean():.3f} px "
              f"(best possible affine: {err['floor'].mean():.3f}); per pair mean: median "
              f"{np.median(err['mean']):.3f}, 95th pct {np.percentile(err['mean'], 95):.3f}, worst "
              f"{err['mean'].max():.3f}; worst point {err['max'].max():.3f} px")
        excess = err["mean"] - err["floor"]
        print(f"excess over the best affine: mean {excess.mean():.3f} px, worst pair {excess.max():.3f} px")

if __name__ == "__main__":
    main()
