"""Three pictures of a finished run: the curves, the test confusion matrix, the worst mistakes."""
import os

import numpy as np

from harness import files

CURVES, CONFUSION, MISTAKES = "training_curves.png", "confusion_matrix.png", "misclassified.png"


def save_plots(folder, history, scored, dataset, num_mistakes=24):
    """Write the three PNGs into folder (created if needed) and return their paths.

    Needs matplotlib. scored: (probabilities, labels, images) of the test set; dataset: whose
    classes to name. Optional: imported here, so that training never needs it.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs, labels, images = scored
    os.makedirs(folder, exist_ok=True)
    figures = {CURVES: _curves(plt, history), CONFUSION: _confusion(plt, probs, labels, dataset),
               MISTAKES: _mistakes(plt, (probs, labels, images), dataset, num_mistakes)}
    paths = [os.path.join(folder, name) for name in figures]
    try:
        # Each is replaced whole or not at all.
        for path, figure in zip(paths, figures.values()):
            files.write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    finally:
        for figure in figures.values():
            plt.close(figure)
    return paths


def confusion_matrix(predicted, labels, num_classes=10):
    """counts[true, predicted] over the test set."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def worst_mistakes(probs, labels, count):
    """Indices of the wrong predictions made with the highest confidence, most confident first."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:count]


def _curves(plt, history):
    epochs = [r["epoch"] for r in history]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "o-"), ("test", "s--")):
        loss_axis.plot(epochs, [r[f"{split}_loss"] for r in history], style, label=split)
        acc_axis.plot(epochs, [100 * r[f"{split}_acc"] for r in history], style, label=split)
    loss_axis.set(title="Cross-entropy loss", xlabel="epoch", ylabel="mean loss per sample")
    acc_axis.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for axis in (loss_axis, acc_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def _confusion(plt, probs, labels, dataset):
    counts = confusion_matrix(probs.argmax(axis=1), labels, probs.shape[1])
    figure, axis = plt.subplots(figsize=(7.5, 6.5))
    # A log-like colour scale: the diagonal's thousands would otherwise wash out the off-diagonal
    # tens.
    image = axis.imshow(np.log1p(counts), cmap="Blues")
    for (true, predicted), count in np.ndenumerate(counts):
        dark = np.log1p(count) > 0.6 * np.log1p(counts.max())
        axis.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                  color="white" if dark else "black")
    ticks = range(probs.shape[1])
    axis.set(
        xticks=ticks,
        yticks=ticks,
        xlabel=f"predicted {dataset.noun}",
        ylabel=f"true {dataset.noun}",
        title=f"Test confusion matrix ({int(np.trace(counts))} of {counts.sum()} right)",
    )
    if any(len(name) > 1 for name in dataset.classes):
        axis.set_xticklabels(dataset.classes, rotation=45, ha="right", fontsize=7)
        axis.set_yticklabels(dataset.classes, fontsize=7)
    figure.colorbar(image, ax=axis, label="log(1 + count)")
    figure.tight_layout()
    return figure


def _mistakes(plt, scored, dataset, count):
    probs, labels, images = scored
    worst = worst_mistakes(probs, labels, count)
    columns = 8
    rows = max(1, -(-len(worst) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.4, rows * 1.75), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, worst):
        predicted = int(probs[index].argmax())
        axis.imshow(images[index].reshape(28, 28), cmap="gray_r")
        axis.set_title(f"true {dataset.classes[labels[index]]}, said {dataset.classes[predicted]}\n"
                       f"{100 * probs[index, predicted]:.1f}% sure", fontsize=7)
    figure.suptitle(f"The {len(worst)} most confident test mistakes")
    figure.tight_layout()
    return figure
