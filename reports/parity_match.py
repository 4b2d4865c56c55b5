"""Pairing the detections two backends keep after NMS, for the parity check (reports.export.check_parity).

Two backends whose raw outputs agree within tolerance can still keep different boxes after NMS: a score a
hair above the threshold in one and below in the other (borderline), a near-equal overlapping pair where each
keeps the other one (an NMS tie), or a degenerate box whose IoU with its own twin a thousandth of a pixel moves.
Only what is none of these is a missing detection.
"""

from __future__ import annotations

import numpy as np
import torch

from yolo.boxes import box_iou


def _same_box(a: np.ndarray, b: np.ndarray, box_tol: float) -> tuple[np.ndarray, np.ndarray]:
    """(len(a), len(b)) whether each pair is one box (IoU > 0.9, or every corner within `box_tol` px), and the
    largest corner distance of each pair. The corner rule is for degenerate boxes (an untrained cut predicts boxes
    0.01 px high), whose IoU a thousandth of a pixel moves below 0.9."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), dtype=bool), np.zeros((len(a), len(b)))
    iou = box_iou(torch.from_numpy(a[:, :4]), torch.from_numpy(b[:, :4])).numpy()
    dist = np.abs(a[:, None, :4] - b[None, :, :4]).max(-1)
    return (iou > 0.9) | (dist <= box_tol), dist


def _twin(det: np.ndarray, pool: np.ndarray, score_tol: float, box_tol: float) -> bool:
    """Whether `pool` (k, 6) holds `det`'s box: same class, the same box, score within `score_tol`."""
    same = pool[(pool[:, 5] == det[5]) & (np.abs(pool[:, 4] - det[4]) <= score_tol)] if len(pool) else pool
    return bool(_same_box(det[None], same, box_tol)[0].any())


def match_detections(
    a: np.ndarray, b: np.ndarray, conf_thres: float, score_tol: float, box_tol: float,
    pool_a: np.ndarray | None = None, pool_b: np.ndarray | None = None,
) -> tuple[list[float], list[float], int, int, int]:
    """Pair (n, 6) detections of equal class, the same box (`_same_box`), nearest corners first; returns box/score
    diffs and the unmatched counts: real, borderline (score within `score_tol` of `conf_thres`) and NMS ties (the
    other backend's candidates before NMS, `pool_a` / `pool_b`, hold the same box: near-equal scores made NMS keep a
    different one; with raw outputs matching within tolerance, as the raw check makes sure, a tie is NMS's
    discontinuity, not an export error)."""

    box_d, score_d, used = [], [], set()
    unmatched = borderline = ties = 0
    same, dist = _same_box(a, b, box_tol)

    def judge(det: np.ndarray, other_pool: np.ndarray | None) -> None:
        nonlocal unmatched, borderline, ties
        if abs(det[4] - conf_thres) <= score_tol:
            borderline += 1
        elif other_pool is not None and _twin(det, other_pool, score_tol, box_tol):
            ties += 1
        else:
            unmatched += 1

    for i in range(len(a)):
        cand = [j for j in range(len(b)) if j not in used and b[j, 5] == a[i, 5] and same[i, j]]
        j = min(cand, key=lambda j: dist[i, j], default=None)
        if j is not None:
            used.add(j)
            box_d.append(float(dist[i, j]))
            score_d.append(float(abs(a[i, 4] - b[j, 4])))
        else:
            judge(a[i], pool_b)
    for j in range(len(b)):
        if j not in used:
            judge(b[j], pool_a)
    return box_d, score_d, unmatched, borderline, ties
