"""Figures the notebooks show: each function draws one figure and returns it.

Every function takes numpy arrays (images uint8 or float in [0, 1], maps float) and
returns a ``matplotlib.figure.Figure``; :func:`save` writes it atomically as PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from anomaly_utils.artifacts import atomic_path
from anomaly_utils.evaluation import metrics
from anomaly_utils.scoring.candidates import REGISTRY

MODEL_COLORS = {c.name: c.color for c in REGISTRY}
sns.set_theme(style="whitegrid", context="notebook")

# Inline figures at 72 dpi keep the committed notebooks small; saved figures use save()'s dpi.
plt.rcParams["figure.dpi"] = 72


def save(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save ``fig`` as PNG atomically, trimmed to what it draws.

    Returns nothing on purpose: as the last line of a notebook cell a returned path would be
    printed (a trailing ``;`` does not suppress it when nbval runs the cell).
    """
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")


def save_page(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a :func:`gallery_rows` page as PNG atomically, as it is laid out.

    A run saves a hundred or more pages. Untrimmed (the page lays itself out) and at zlib
    level 3 instead of 6, a 12-row page saves in 0.85 s instead of 1.22 s, 15 % larger.
    """
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", pil_kwargs={"compress_level": 3})


def _bare(ax) -> None:
    """Turn off ``ax``'s frame and ticks for an image panel.

    Hiding the axes as well as turning them off draws the same pixels, but matplotlib then
    skips laying out tick labels nobody sees each time it places a title: a 12-row gallery
    page (60 panels) builds and saves in 2.7 s instead of 4.4 s, pixel for pixel the same.
    """
    ax.set_axis_off()
    ax.xaxis.set_visible(False)
    ax.yaxis.set_visible(False)


def _show_image(ax, image, title: str | None = None) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0,
              vmax=255 if image.dtype == np.uint8 else 1)
    _bare(ax)
    if title:
        ax.set_title(title, fontsize=9)


def image_grid(images: np.ndarray, titles: list[str] | None = None, ncols: int = 8,
               size: float = 1.6):
    """A grid of images (N, H, W, C)."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _show_image(ax, images[i], titles[i] if titles else None)
        else:
            _bare(ax)
    fig.tight_layout()
    return fig


def contour(ax, mask: np.ndarray, color: str, width: float = 1.2) -> None:
    """Draw the outline of a bool mask (H, W) on ``ax``."""
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=width)


def defect_overlays(images: np.ndarray, masks: np.ndarray, titles: list[str], ncols: int = 5,
                    size: float = 2.2):
    """Defect images with their ground-truth mask outlined in red."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            _bare(ax)
            continue
        _show_image(ax, images[i], titles[i])
        mask = masks[i]
        if mask.shape != images[i].shape[:2]:
            import cv2

            mask = cv2.resize(mask.astype(np.uint8), images[i].shape[1::-1],
                              interpolation=cv2.INTER_NEAREST).astype(bool)
        contour(ax, mask, "red")
    fig.tight_layout()
    return fig


def intensity_histograms(images: np.ndarray, types: np.ndarray):
    """Distribution of pixel intensities (the mean over channels) of normal vs each defect
    type: density over 64 bins from 0 to 255.

    Counted one image at a time: a test set of a thousand 256 px images as one float array
    of pixels, copied by a plotting library, took gigabytes.
    """
    fig, ax = plt.subplots(figsize=(7, 3.5))
    edges = np.linspace(0, 255, 65)
    for kind in sorted(set(types.tolist()), key=lambda t: (t != "good", t)):
        counts = np.zeros(len(edges) - 1)
        for image in images[types == kind]:
            counts += np.histogram(image.mean(axis=-1) if image.ndim == 3 else image, edges)[0]
        ax.stairs(counts / max(counts.sum(), 1) / np.diff(edges), edges, label=kind,
                  linewidth=1.8 if kind == "good" else 1.0)
    ax.set_ylabel("density")
    ax.set_xlabel("pixel intensity (0-255)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def defect_areas(masks: np.ndarray, types: np.ndarray):
    """Box plot of the defect area per type, as a percentage of the image."""
    import pandas as pd

    defective = types != "good"
    frame = pd.DataFrame({"defect type": types[defective],
                          "area (% of image)": 100 * masks[defective].mean(axis=(1, 2))})
    fig, ax = plt.subplots(figsize=(7, 3.2))
    sns.boxplot(data=frame, x="defect type", y="area (% of image)", ax=ax, color="#c8d6e5")
    sns.stripplot(data=frame, x="defect type", y="area (% of image)", ax=ax, size=3,
                  color="#222", alpha=0.6)
    ax.set_yscale("log")
    fig.tight_layout()
    return fig


def image_sizes(sizes: np.ndarray):
    """Scatter of original image heights and widths (N, 2), pixels."""
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.scatter(sizes[:, 1], sizes[:, 0], s=8, alpha=0.5)
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    fig.tight_layout()
    return fig


def loss_curves(history: dict):
    """Training and validation loss per epoch from a Keras history dict."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], label="train")
    if "val_loss" in history:
        ax.plot(epochs, history["val_loss"], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    return fig


def reconstruction_rows(images: np.ndarray, recons: np.ndarray, maps: np.ndarray,
                        masks: np.ndarray, titles: list[str], size: float = 2.0):
    """One row per image: input, reconstruction, anomaly map with the true defect outlined."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(3 * size, n * size), squeeze=False)
    for i in range(n):
        _show_image(axes[i, 0], images[i], titles[i])
        _show_image(axes[i, 1], np.clip(recons[i], 0, 1), "reconstruction")
        axes[i, 2].imshow(maps[i], cmap="inferno")
        _bare(axes[i, 2])
        axes[i, 2].set_title("anomaly map", fontsize=9)
        contour(axes[i, 2], masks[i], "cyan")
    fig.tight_layout()
    return fig


def score_distributions(scores: np.ndarray, types: np.ndarray,
                        thresholds: dict[str, float] | None = None, title: str = ""):
    """Image scores of normal vs each defect type, with candidate thresholds as lines."""
    import pandas as pd

    frame = pd.DataFrame({"score": scores, "type": types})
    order = sorted(set(types.tolist()), key=lambda t: (t != "good", t))
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    sns.stripplot(data=frame, x="score", y="type", order=order, ax=ax, size=3.5, alpha=0.7,
                  jitter=0.25, hue="type", palette="tab10", legend=False)
    for (name, value), style in zip((thresholds or {}).items(), ["-", "--", ":", "-.", "-"],
                                    strict=False):
        ax.axvline(value, color="k", linestyle=style, linewidth=1, label=name)
    if thresholds:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def roc_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]]):
    """ROC and precision-recall curves of several models: {name: (labels, scores)}."""
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(9, 3.8))
    for name, (labels, scores) in curves.items():
        color = MODEL_COLORS.get(name)
        roc = metrics.roc_curve(labels, scores)
        if roc is None:  # one class: no curve, said in the legend
            ax_roc.plot([], [], color=color, label=f"{name} (one class only, no curve)")
            continue
        fpr, tpr, _ = roc
        ax_roc.plot(fpr, tpr, color=color,
                    label=f"{name} (AUROC {np.trapezoid(tpr, fpr):.3f})")
        precision, recall, _ = metrics.precision_recall_curve(labels, scores)
        ax_pr.plot(np.r_[0.0, recall], np.r_[1.0, precision], color=color, label=name)
    ax_roc.plot([0, 1], [0, 1], color="0.6", linestyle=":")
    ax_roc.set_xlabel("false-positive rate")
    ax_roc.set_ylabel("true-positive rate")
    ax_pr.set_xlabel("recall")
    ax_pr.set_ylabel("precision")
    ax_roc.legend(fontsize=8)
    ax_pr.legend(fontsize=8)
    fig.tight_layout()
    return fig


def gallery_rows(rows: list[dict], size: float = 2.0):
    """The results gallery: one row per test image.

    Each row dict holds ``image`` (H, W, C), ``recon`` (H, W, C, or None for a candidate
    that reconstructs nothing), ``map`` (E, E), ``mask`` and ``pred`` (E, E) bool, ``score``,
    ``threshold``, ``verdict`` ("TP"/"FP"/"FN"/"TN") and ``title``; a model with a
    segmentation head adds ``error_map`` (E, E), its reconstruction error. Columns: original,
    reconstruction (when rows have one), the error map (when rows have one), heatmap of
    ``map`` over the image with the ground truth (cyan) and predicted region (magenta)
    outlined, and the score against the threshold.
    """
    import cv2

    n = len(rows)
    with_error = any(row.get("error_map") is not None for row in rows)
    with_recon = any(row.get("recon") is not None for row in rows)
    columns = 3 + with_recon + with_error
    # A fixed layout instead of tight_layout, which measures every text of 60 panels (0.2 s
    # of a 12-row page): inches above each row for its titles, below it for the score axis.
    above, below, side = 0.3, 0.25, 0.05
    width, height = columns * size, n * (size + above + below)
    axis = size / height
    fig, axes = plt.subplots(n, columns, figsize=(width, height), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * (columns - 1) + [0.9],
                                          "left": side / width, "right": 1 - side / width,
                                          "top": 1 - above / height,
                                          "bottom": below / height,
                                          "hspace": (above + below) / height / axis,
                                          "wspace": 0.1})
    for i, row in enumerate(rows):
        image = np.asarray(row["image"], np.float32)
        image = image / 255.0 if image.max() > 1.5 else image
        _show_image(axes[i, 0], image, row["title"])
        if with_recon:
            if row.get("recon") is not None:
                _show_image(axes[i, 1], np.clip(row["recon"], 0, 1), "reconstruction")
            else:
                _bare(axes[i, 1])
        side = image.shape[0]
        if with_error:
            ax = axes[i, 1 + with_recon]
            if row.get("error_map") is not None:
                ax.imshow(cv2.resize(row["error_map"].astype(np.float32), (side, side)),
                          cmap="inferno")
                ax.set_title("reconstruction error", fontsize=8)
            _bare(ax)
        ax = axes[i, columns - 2]
        heat = cv2.resize(row["map"].astype(np.float32), (side, side))
        _show_image(ax, image, None)
        ax.imshow(heat, cmap="jet", alpha=0.45)
        for key, color in (("mask", "cyan"), ("pred", "magenta")):
            if row.get(key) is not None:
                mask = cv2.resize(row[key].astype(np.uint8), (side, side),
                                  interpolation=cv2.INTER_NEAREST).astype(bool)
                contour(ax, mask, color)
        learned = row.get("error_map") is not None
        ax.set_title(("learned map" if learned else "heatmap") + " · truth · predicted",
                     fontsize=8)
        ax = axes[i, columns - 1]
        good = row["verdict"] in ("TP", "TN")
        ax.barh([0], [row["score"]], color="#2ca02c" if good else "#d62728", height=0.5)
        ax.axvline(row["threshold"], color="k", linestyle="--", linewidth=1)
        ax.set_xlim(0, max(row["score"], row["threshold"]) * 1.3 or 1)
        ax.set_yticks([])
        ax.set_title(f"{row['verdict']}  score {row['score']:.3g}", fontsize=9)
        ax.tick_params(labelsize=7)
    return fig
