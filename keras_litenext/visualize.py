"""Pictures of a run: training curves, prediction overlays and confusion matrices (PNG, written atomically)."""

import csv
import math

import cv2
import numpy as np

from keras_litenext.utils import atomic_path

GT_COLOR = (0, 255, 0)  # RGB: ground-truth outline, green
PRED_COLOR = (255, 0, 80)  # RGB: predicted mask, red tint and outline


def _as_rgb(image):
    """`(H, W, 3)` uint8 copy of a grey/RGB(A) image, uint8 or float in `[0, 1]`."""
    img = np.asarray(image)
    if img.dtype == np.uint16:  # an intensity recipe's storage: 0..65535 is [0, 1]
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.dtype != np.uint8:
        img = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3].copy()


def _plane(mask, shape):
    """A mask as a 2-D `(H, W)` array (`np.squeeze` would drop the axes of a 1-pixel-wide image)."""
    return np.asarray(mask).reshape(shape[:2])


def overlay(image, pred_mask, true_mask=None, alpha=0.35):
    """An RGB uint8 picture of `image` with the predicted mask tinted red and outlined, and the
    ground-truth outline in green when `true_mask` is given.

    Args:
        image: `(H, W)` or `(H, W, C)` array, uint8 or float in `[0, 1]`.
        pred_mask, true_mask: `(H, W)` or `(H, W, 1)` arrays, non-zero = foreground.
    """
    img = _as_rgb(image)
    pred = (_plane(pred_mask, img.shape) > 0).astype(np.uint8)
    tint = img.astype(np.float32)
    tint[pred > 0] = (1 - alpha) * tint[pred > 0] + alpha * np.array(PRED_COLOR, np.float32)
    out = np.ascontiguousarray(tint.astype(np.uint8))
    contours, _ = cv2.findContours(pred, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, PRED_COLOR, 1)
    if true_mask is not None:
        gt = (_plane(true_mask, img.shape) > 0).astype(np.uint8)
        contours, _ = cv2.findContours(gt, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, GT_COLOR, 1)
    return out


def class_colors(num_classes):
    """RGB colours of classes 1..K-1 (class 0, the background, is never tinted): the first is
    `PRED_COLOR`, then well-separated hues."""
    base = [PRED_COLOR, (0, 160, 255), (255, 200, 0), (180, 0, 255), (0, 220, 160), (255, 120, 0), (120, 255, 0)]
    colors = [(0, 0, 0)]
    for i in range(1, num_classes):
        if i - 1 < len(base):
            colors.append(base[i - 1])
        else:
            hue = int(180 * ((i * 0.618) % 1.0))
            colors.append(tuple(int(v) for v in cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0]))
    return colors


def overlay_labels(image, labels, num_classes, true_labels=None, alpha=0.35):
    """`overlay` for label maps: two classes as `overlay`; more get one tint and outline per
    class (`class_colors`), and the true class outlines in the same colours, thinner inside a
    white halo when `true_labels` is given."""
    img = _as_rgb(image)
    labels = _plane(labels, img.shape)
    if num_classes <= 2:
        return overlay(image, labels, true_labels, alpha=alpha)
    colors = class_colors(num_classes)
    tint = img.astype(np.float32)
    for c in range(1, num_classes):
        where = labels == c
        tint[where] = (1 - alpha) * tint[where] + alpha * np.array(colors[c], np.float32)
    out = np.ascontiguousarray(tint.astype(np.uint8))
    if true_labels is not None:
        gt = _plane(true_labels, img.shape)
        for c in range(1, num_classes):
            contours, _ = cv2.findContours((gt == c).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def add_legend(rgb, class_names, colors=None):
    """`rgb` with a strip below it naming each foreground class next to its colour."""
    rgb = np.asarray(rgb)
    colors = colors or class_colors(len(class_names))
    h, w = rgb.shape[:2]
    row = 18
    entries = list(enumerate(class_names))[1:]
    strip = np.full((row * len(entries) + 4, w, 3), 255, np.uint8)
    for k, (c, name) in enumerate(entries):
        y = 2 + k * row
        cv2.rectangle(strip, (4, y + 3), (16, y + 15), tuple(int(v) for v in colors[c]), -1)
        cv2.putText(strip, f"{c}: {name}", (22, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([rgb, strip], axis=0)


def save_png(path, rgb):
    """Write an RGB (H, W, 3) or grey (H, W) uint8 image as PNG, atomically."""
    rgb = np.asarray(rgb)
    ok, buf = cv2.imencode(".png", rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"Cannot encode a PNG for {path}.")
    with atomic_path(path) as tmp:
        buf.tofile(tmp)


def save_grid(path, tiles, columns=4, pad=2, legend=None):
    """Save equally sized RGB tiles as one PNG grid (with a class legend below, if given)."""
    if not tiles:
        return
    h, w = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / columns)
    cols = min(columns, len(tiles))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = tile
    save_png(path, add_legend(grid, legend) if legend else grid)


def plot_history(csv_path, png_path):
    """Plot every column of a Keras `CSVLogger` file against the epoch: losses on the left,
    metrics on the right, training solid and validation dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    columns = [c for c in rows[0] if c not in ("epoch", "learning_rate", "lr")]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for column in columns:
        base = column[4:] if column.startswith("val_") else column
        ax = ax_loss if "loss" in base else ax_metric
        values = [float(r[column]) if r[column] not in ("", "nan") else math.nan for r in rows]
        ax.plot(epochs, values, linestyle="--" if column.startswith("val_") else "-", label=column)
    for ax, title in ((ax_loss, "loss"), (ax_metric, "metrics")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_confusion_matrix(matrix, class_names, png_path, title=None):
    """Plot a confusion matrix (rows true, columns predicted) as a PNG: counts in each cell,
    the cell shaded by the row's fraction (the recall of the true class on the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix, np.int64)
    k = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    fractions = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    side = max(3.5, 0.9 * k + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), [str(n) for n in class_names], rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), [str(n) for n in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{fractions[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if fractions[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
