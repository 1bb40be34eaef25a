"""Figures of an evaluation (`lcnet.evaluate`): each function returns a matplotlib Figure.

Figures are built with `matplotlib.figure.Figure` (no pyplot, no display needed); save one with
`fig.savefig(path)`.
"""
from __future__ import annotations

import io

import matplotlib.figure
import numpy as np


class Figure(matplotlib.figure.Figure):
  """A matplotlib Figure that shows itself in a notebook (as PNG) without pyplot."""

  def _repr_png_(self) -> bytes:
    buf = io.BytesIO()
    self.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _tile(imgs_NxHxW: np.ndarray, cols: int) -> np.ndarray:
  """Images scaled to [0, 1] each, tiled with a 1-pixel gap."""
  n, h, w = imgs_NxHxW.shape
  rows = -(-n // cols)
  out = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1), 0.5)
  for i, im in enumerate(imgs_NxHxW):
    lo, hi = im.min(), im.max()
    r, c = divmod(i, cols)
    out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = \
        (im - lo) / (hi - lo + 1e-12)
  return out


def filter_mosaics(params: dict, locations: int = 8) -> dict[str, tuple[np.ndarray, str]]:
  """Each layer's encoder filters as one image: a row per map, a column per output location along
  the diagonal (untied: each location has its own); layers above the first show each filter's L2
  norm over input maps. {layer name: (mosaic [H, W], title)}."""
  out = {}
  for i, name in enumerate(sorted(params, key=lambda k: int(k.removeprefix("layer")))):
    w = np.asarray(params[name]["encoder"]["kernel"])  # [Ho, Wo, kh, kw, C, F]
    ho, wo, kh, kw, c, f = w.shape
    idx = np.linspace(0, min(ho, wo) - 1, min(locations, min(ho, wo))).round().astype(int)
    img = w.mean(4) if i == 0 else np.sqrt(np.sum(w * w, 4))  # [Ho, Wo, kh, kw, F]
    tiles = np.stack([img[j, j, :, :, m] for m in range(f) for j in idx])
    out[name] = (_tile(tiles, len(idx)), f"{name}: {f} maps x {len(idx)} locations ({kh}x{kw}x{c})")
  return out


def filters(params: dict, locations: int = 8) -> Figure:
  """`filter_mosaics` of every layer, one panel each."""
  mosaics = filter_mosaics(params, locations)
  fig = Figure(figsize=(2 + 1.2 * locations, 3 * len(mosaics)))
  for i, (mosaic, title) in enumerate(mosaics.values()):
    ax = fig.add_subplot(len(mosaics), 1, i + 1)
    ax.imshow(mosaic, cmap="gray", interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
  fig.tight_layout()
  return fig


def images(imgs: np.ndarray, titles: list[str] | None = None, cols: int = 8,
           title: str = "") -> Figure:
  """A grid of images [N, H, W(, C)], each scaled to its own range (top-k images, stimuli)."""
  x = np.asarray(imgs)
  x = x.mean(-1) if x.ndim == 4 else x
  cols = min(cols, len(x))
  rows = -(-len(x) // cols)
  fig = Figure(figsize=(max(1.6 * cols, 4.0), 1.8 * rows + 0.6))
  for i, im in enumerate(x):
    ax = fig.add_subplot(rows, cols, i + 1)
    ax.imshow(im, cmap="gray")
    ax.axis("off")
    if titles:
      ax.set_title(titles[i], fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def stimulus(report: dict) -> Figure:
  """The chosen unit's optimal stimulus."""
  s, u = report["stimulus"], report["face_unit"]
  return images(s["image"][None], [f"activation {s['activation']:.3g}"], 1,
                f"optimal stimulus: layer {u['layer']} {tuple(u['location'])} map {u['map']}")


def top_k(report: dict) -> Figure:
  t = report["top_k"]
  return images(t["images"], [f"{'face' if l else 'non-face'} {r:.2f}"
                              for l, r in zip(t["labels"], t["responses"])],
                title="the unit's top test images")


def histogram(report: dict) -> Figure:
  """The chosen unit's test responses, faces vs non-faces, with the selection threshold."""
  h, u = report["histogram"], report["face_unit"]
  e = np.asarray(h["edges"])
  fig = Figure(figsize=(6, 3.5))
  ax = fig.add_subplot()
  for key, colour in (("nonfaces", "tab:blue"), ("faces", "tab:red")):
    ax.stairs(h[key], e, label=key, color=colour, fill=True, alpha=0.5)
  ax.axvline(u["threshold"], color="k", ls="--", label="threshold (selection)")
  ax.set_xlabel("signed response of the unit (test split)")
  ax.set_ylabel("images")
  ax.legend()
  fig.tight_layout()
  return fig


def roc(curves: dict[str, dict], aucs: dict[str, float] | None = None) -> Figure:
  """ROC curves {name: {fpr, tpr}} (the unit and controls), AUCs in the legend."""
  fig = Figure(figsize=(4.5, 4.5))
  ax = fig.add_subplot()
  for name, c in curves.items():
    label = f"{name} ({aucs[name]:.3f})" if aucs and name in aucs else name
    ax.plot(c["fpr"], c["tpr"], label=label)
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def invariance(report: dict) -> Figure:
  """Mean (+-1 std) signed response to shifted, zoomed and rotated test faces, against the mean
  response of test non-faces (Le et al. Fig. 4)."""
  inv = report["invariance"]
  units = {"translation_x": "shift (fraction of side)", "translation_y": "shift (fraction of side)",
           "scale": "zoom", "rotation": "in-plane rotation (degrees)"}
  fig = Figure(figsize=(3.2 * len(inv), 3))
  h = report["histogram"]
  c = (np.asarray(h["edges"][:-1]) + np.asarray(h["edges"][1:])) / 2
  nonface = float(np.sum(c * h["nonfaces"]) / max(np.sum(h["nonfaces"]), 1))
  for i, (name, d) in enumerate(inv.items()):
    ax = fig.add_subplot(1, len(inv), i + 1)
    v, m, s = (np.asarray(d[k]) for k in ("values", "mean", "std"))
    ax.plot(v, m, "o-", color="tab:red", label="faces")
    ax.fill_between(v, m - s, m + s, color="tab:red", alpha=0.2)
    ax.axhline(nonface, color="tab:blue", ls="--", label="non-faces (mean)")
    ax.set_xscale("log" if name == "scale" else "linear")
    ax.set_title(name)
    ax.set_xlabel(units.get(name, name))
  fig.axes[0].legend(fontsize=8)
  fig.tight_layout()
  return fig


def sharding(x, valid_hw: tuple[int, int] | None = None, title: str = "") -> Figure:
  """Which device holds which block of dims 0 and 1 of a sharded array (e.g. a kernel
  w[Ho, Wo, ...] tiled over rows x cols): one coloured rectangle per shard, labelled with its
  device id (several ids: replicated). `valid_hw` outlines the unpadded region of a canvas."""
  import matplotlib.patches as patches
  shape = x.shape[:2]
  owners: dict[tuple, list[int]] = {}
  for s in x.addressable_shards:
    idx = tuple((sl.start or 0, sl.stop if sl.stop is not None else n)
                for sl, n in zip(s.index[:2], shape))
    owners.setdefault(idx, []).append(s.device.id)
  fig = Figure(figsize=(5, 5 * shape[0] / max(shape[1], 1) + 0.5))
  ax = fig.add_subplot(1, 1, 1)
  colours = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69",
             "#fccde5")
  for i, (((r0, r1), (c0, c1)), devs) in enumerate(sorted(owners.items())):
    ax.add_patch(patches.Rectangle((c0, r0), c1 - c0, r1 - r0, facecolor=colours[i % 8],
                                   edgecolor="k"))
    ax.text((c0 + c1) / 2, (r0 + r1) / 2, "dev " + ",".join(map(str, sorted(devs))),
            ha="center", va="center", fontsize=8)
  if valid_hw:
    ax.add_patch(patches.Rectangle((0, 0), valid_hw[1], valid_hw[0], fill=False, edgecolor="r",
                                   linestyle="--", linewidth=2, label=f"valid {valid_hw}"))
    ax.legend(loc="lower right", fontsize=8)
  ax.set_xlim(0, shape[1])
  ax.set_ylim(shape[0], 0)
  ax.set_xlabel("output column (Wo)")
  ax.set_ylabel("output row (Ho)")
  ax.set_title(title or f"{tuple(x.shape)} over {len({d for v in owners.values() for d in v})} "
               f"devices")
  fig.tight_layout()
  return fig
