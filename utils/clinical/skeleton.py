"""Centre line of one gland: the longest path of its skeleton, smoothed, extended to the mask edge.

Coordinates are ``(row, col)`` in pixels, pixel centres at integers. A gland mask is a
2-D bool array ``[h, w]`` holding one 8-connected object (a crop is fine).

The centre line (:func:`centre_line`) is built in five steps:

1. skeleton: ``skimage.morphology.skeletonize`` of the mask with its holes filled (so a
   hole does not turn the centre line into a loop);
2. longest path: the skeleton's pixels are the nodes of a graph whose edges join
   8-neighbours with weight 1 (axial) or sqrt(2) (diagonal); the path is found with two
   Dijkstra sweeps (``scipy.sparse.csgraph``): the node farthest from any node, then the
   node farthest from that one. On a tree this is the longest path exactly; the small
   pixel triangles of an 8-connected skeleton do not change it, and on any remaining
   cycle it is the longest shortest path (a loop is passed on its shorter side);
3. trimming: the skeleton stops about half a gland width short of each tip and often
   hooks into a corner of it there, so :data:`TRIM_FACTOR` times the gland's half-width
   (the median inside distance along the path, minus half a pixel) of path length is
   dropped at each end;
4. smoothing: the path's coordinates are Gaussian-smoothed along the path (sigma
   :data:`PATH_SIGMA` steps; the ends are padded by point reflection, so straight ends
   stay in place). Summing 1 / sqrt(2) per step alone overestimates the length of a
   digital straight line of slope ``m`` (|m| <= 1) by ``(1 + 0.414 m) / sqrt(1 + m^2)``,
   up to 8 % near ``m = 0.4``; the smoothed polyline removes most of this staircase bias;
5. extension: each end is extended along the path's end direction (taken over
   :data:`TANGENT_STEPS` steps) to the mask boundary (the edge between the last gland
   pixel and the first background pixel). A path reduced to one point (a short or round
   gland) is extended both ways along the mask's principal axis.

The centre line's length is the length of that polyline, so it is never shorter than
the straight distance between its two ends.

No skeleton-analysis package (e.g. ``skan``) is used: one longest path per gland needs
only the pixel graph and two ``csgraph.dijkstra`` calls, and skan would add numba and
pandas to the dependencies for branch statistics this project does not report.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse import csgraph
from skimage.morphology import skeletonize

PATH_SIGMA = 1.5        # Gaussian smoothing of the path coordinates, in path steps
TANGENT_STEPS = 5       # path steps over which an end's direction is taken
TRIM_FACTOR = 1.5       # path length dropped at each end before extending, in half-widths
RAY_STEP = 0.25         # pixels between the samples of an extension ray

# (row offset, col offset, edge length) of the four forward 8-neighbours
_FORWARD_NEIGHBOURS = ((0, 1, 1.0), (1, 0, 1.0), (1, 1, float(np.sqrt(2.0))), (1, -1, float(np.sqrt(2.0))))


def skeleton_graph(skeleton: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Pixel graph of a skeleton ``bool [h, w]``.

    Returns ``(graph, coords)``: ``graph`` is an ``N x N`` sparse matrix with one entry
    per pair of 8-neighbouring skeleton pixels (1 axial, sqrt(2) diagonal; each pair
    once, use it undirected); ``coords`` is ``int [N, 2]`` (row, col) of node ``i``.
    """
    height, width = skeleton.shape
    index = np.full((height + 2, width + 2), -1, dtype=np.int64)
    rows, cols = np.nonzero(skeleton)
    index[rows + 1, cols + 1] = np.arange(rows.size)
    core = index[1:-1, 1:-1]
    starts, ends, weights = [], [], []
    for dr, dc, weight in _FORWARD_NEIGHBOURS:
        neighbour = index[1 + dr:height + 1 + dr, 1 + dc:width + 1 + dc]
        both = (core >= 0) & (neighbour >= 0)
        starts.append(core[both])
        ends.append(neighbour[both])
        weights.append(np.full(int(both.sum()), weight))
    graph = sparse.coo_matrix((np.concatenate(weights), (np.concatenate(starts), np.concatenate(ends))),
                              shape=(rows.size, rows.size)).tocsr()
    return graph, np.stack([rows, cols], axis=1)


def _farthest(graph: sparse.csr_matrix, source: int) -> tuple[int, np.ndarray]:
    """Node farthest from ``source`` (among the reachable ones) and the predecessor array."""
    distances, predecessors = csgraph.dijkstra(graph, directed=False, indices=source,
                                               return_predecessors=True)
    distances = np.where(np.isfinite(distances), distances, -1.0)
    return int(np.argmax(distances)), predecessors


def longest_skeleton_path(skeleton: np.ndarray) -> np.ndarray:
    """Longest path of a connected skeleton ``bool [h, w]`` (two Dijkstra sweeps, see the
    module docstring): ``int [K, 2]`` (row, col) from one end to the other, K >= 1.
    Raises ValueError for an empty skeleton."""
    graph, coords = skeleton_graph(skeleton)
    if coords.shape[0] == 0:
        raise ValueError("the skeleton is empty")
    start, _ = _farthest(graph, 0)
    end, predecessors = _farthest(graph, start)
    path = [end]
    while path[-1] != start:
        path.append(int(predecessors[path[-1]]))
    return coords[path[::-1]]


def smooth_path(points: np.ndarray, sigma: float = PATH_SIGMA) -> np.ndarray:
    """Gaussian smoothing of ``[K, 2]`` path coordinates along the path -> float ``[K, 2]``.

    The ends are padded by point reflection (``np.pad`` odd reflection), which keeps a
    straight path's end points where they are. Paths of fewer than 3 points are returned
    unchanged (as float).
    """
    points = np.asarray(points, dtype=np.float64)
    if sigma <= 0 or points.shape[0] < 3:
        return points.copy()
    pad = int(np.ceil(4 * sigma))
    padded = np.pad(points, ((pad, pad), (0, 0)), mode="reflect", reflect_type="odd")
    return ndi.gaussian_filter1d(padded, sigma, axis=0, mode="nearest")[pad:-pad]


def polyline_length(points: np.ndarray) -> float:
    """Sum of the segment lengths of a ``[K, 2]`` polyline (0 for K < 2)."""
    points = np.asarray(points, dtype=np.float64)
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


def distance_to_edge(mask: np.ndarray, start: np.ndarray, direction: np.ndarray) -> float:
    """Distance from ``start`` (row, col) along the unit ``direction`` to the edge of ``mask``.

    The ray is sampled every :data:`RAY_STEP` pixels; a sample is inside when its nearest
    pixel is a mask pixel. Returns the distance to the middle between the last inside
    and the first outside sample (anything beyond the array is outside).
    """
    height, width = mask.shape
    steps = np.arange(1, int(np.ceil(np.hypot(height, width) / RAY_STEP)) + 2) * RAY_STEP
    pixels = np.rint(start[None, :] + steps[:, None] * direction[None, :]).astype(np.int64)
    within = (pixels[:, 0] >= 0) & (pixels[:, 0] < height) & (pixels[:, 1] >= 0) & (pixels[:, 1] < width)
    inside = np.zeros(steps.size, dtype=bool)
    inside[within] = mask[pixels[within, 0], pixels[within, 1]]
    first_out = int(np.argmin(inside))  # the last sample is always outside the array
    return max(float(steps[first_out]) - RAY_STEP / 2, 0.0)


def principal_axis(mask: np.ndarray) -> np.ndarray:
    """Unit (row, col) direction of the largest spread of the mask's pixels (any sign)."""
    coords = np.argwhere(mask).astype(np.float64)
    if coords.shape[0] < 2:
        return np.array([1.0, 0.0])
    _, vectors = np.linalg.eigh(np.cov(coords, rowvar=False))
    return vectors[:, -1]


def _end_direction(path: np.ndarray, at_start: bool) -> np.ndarray | None:
    """Unit direction pointing out of the path at one end, from :data:`TANGENT_STEPS`
    steps inside; None when the path has a single point."""
    k = min(TANGENT_STEPS, path.shape[0] - 1)
    if k < 1:
        return None
    end, inner = (path[0], path[k]) if at_start else (path[-1], path[-1 - k])
    vector = end - inner
    norm = float(np.hypot(*vector))
    return vector / norm if norm > 0 else None


def trim_ends(path: np.ndarray, trim: float) -> np.ndarray:
    """Drop the path's points less than ``trim`` (path length) from either end, keeping at
    least the middle point. ``path``: ``[K, 2]``."""
    steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
    from_start = np.concatenate([[0.0], np.cumsum(steps)])
    keep = (from_start >= trim) & (from_start[-1] - from_start >= trim)
    return path[keep] if keep.any() else path[[path.shape[0] // 2]]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """bool ``[h, w]``: the mask (non-zero = foreground) with its holes filled, a hole being
    background that is not 4-connected to the array's border."""
    outside = np.pad(np.asarray(mask) == 0, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(outside, None, (0, 0), 2)          # 4-connected flood of the border background
    return (outside != 2)[1:-1, 1:-1]


def centre_line(mask: np.ndarray) -> np.ndarray:
    """Centre line of one gland ``bool [h, w]`` -> float ``[K, 2]`` (row, col), K >= 2.

    First and last rows are the extended end points (see the module docstring); the rows
    between are the smoothed longest skeleton path. Raises ValueError for an empty mask.
    """
    filled = fill_holes(mask)
    if not filled.any():
        raise ValueError("the gland mask is empty")
    padded = np.pad(filled, 1)
    path = longest_skeleton_path(skeletonize(padded))
    inside = cv2.distanceTransform(padded.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    half_width = float(np.median(inside[path[:, 0], path[:, 1]])) - 0.5
    path = smooth_path(trim_ends(path.astype(np.float64), TRIM_FACTOR * half_width))
    first, last = _end_direction(path, True), _end_direction(path, False)
    if first is None or last is None:
        last = principal_axis(padded)
        first = -last
    start = path[0] + distance_to_edge(padded, path[0], first) * first
    stop = path[-1] + distance_to_edge(padded, path[-1], last) * last
    return np.vstack([start, path, stop]) - 1.0
