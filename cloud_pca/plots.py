"""PNG plots of a PCA run: the scree / cumulative variance curve, and the projections coloured by label.

Figures are made with matplotlib's object API (``Figure``, no pyplot state), so that the job can draw them in
threads while it writes its other outputs."""
from __future__ import annotations

import io

import numpy as np


def figure(**kw):
    """A new Agg figure of its own (not registered with pyplot: nothing to close, safe in a thread)."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def png(fig, *, tight: bool = False) -> bytes:
    """The figure as PNG bytes. The job's figures set their margins where they are made: ``tight``
    (bbox_inches="tight") draws a figure twice, to measure it and to save it (a quarter of a refresh's plotting)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, **({"bbox_inches": "tight"} if tight else {}))
    if getattr(fig.canvas, "manager", None) is not None:   # a pyplot figure (evaluate's): release it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


def scree(explained: dict, max_components: int = 100) -> bytes:
    ratio = np.asarray(explained["explained_variance_ratio"])
    cum = np.asarray(explained["cumulative"])
    m = min(len(ratio), max(max_components, explained["k"] + 5))
    x = np.arange(1, m + 1)
    fig = figure(figsize=(8, 4.5))
    fig.subplots_adjust(left=0.09, right=0.91, bottom=0.12, top=0.92)
    ax = fig.subplots()
    ax.bar(x, ratio[:m], color="#7aa6c2", label="per component")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax2 = ax.twinx()
    ax2.plot(x, cum[:m], color="#c0392b", lw=2, label="cumulative")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("cumulative")
    k = explained["k"]
    ax2.axvline(k, color="gray", ls="--")
    ax2.annotate(f"k={k}: {cum[k - 1]:.1%}", (k, cum[k - 1]), textcoords="offset points", xytext=(8, -14))
    ax.set_title(f"Scree plot ({explained['n_rows']} vectors, {explained['solver']} solver)")
    return png(fig)


def _colors(labels):
    import matplotlib

    names = sorted({str(v) for v in labels})
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return names, {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def scatter(sample, dims: int) -> bytes:
    projection = None
    if dims == 3:
        from mpl_toolkits import mplot3d  # importing it registers the "3d" projection

        projection = mplot3d.Axes3D.name

    pcs = np.stack(sample["pca"].to_numpy()) if len(sample) else np.zeros((0, dims))
    if pcs.shape[1] < dims:  # k smaller than the plot's dimension: pad with zeros, say so in the title
        pcs = np.hstack([pcs, np.zeros((len(pcs), dims - pcs.shape[1]))])
    labels = sample["label"].fillna("(no label)").astype(str).to_numpy()
    names, colors = _colors(labels)
    fig = figure(figsize=(9.5, 6.5))
    fig.subplots_adjust(left=0.08, right=0.80, bottom=0.09, top=0.93)   # the legend goes right of the axes
    ax = fig.add_subplot(111, projection=projection)
    for name in names:
        sel = labels == name
        pts = [pcs[sel, i] for i in range(dims)]
        ax.scatter(*pts, s=8, alpha=0.7, color=colors[name], label=name)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    if dims == 3:
        ax.set_zlabel("PC3")
    ax.set_title(f"First {dims} principal components ({len(pcs)} vectors)")
    # Outside the axes: "best" would test every point against every spot (a second of drawing at 5,000 points)
    ax.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return png(fig)


def scatters(sample) -> dict[str, bytes]:
    """The projections' plots (the scree plot needs only the explained variance: :func:`scree`)."""
    return {"pca_2d.png": scatter(sample, 2), "pca_3d.png": scatter(sample, 3)}
