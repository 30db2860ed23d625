"""What every page shares: where runs are, the run and epoch pickers, cached loaders, thumbnails.

Pages read runs only through :mod:`core.store` and ask core for every computation; the
loaders here only cache. Cached functions take run paths, epochs and a modification stamp,
never arrays (``st.cache_data`` pickles its arguments and copies its value on every call).
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.drift import drift_scores
from core.errors import InputError
from core.store import METRICS, RUN_JSON, Run, list_runs, open_run

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = "runs"
SAMPLE_RUNS = REPO / "sample_data" / "runs"
# plain characters (headless browsers often lack an emoji font)
STATUS_ICONS = {"running": "●", "finished": "✓", "failed": "✗", "interrupted": "‖"}

# the glossary each page links to, in one place
GLOSSARY = {
    "gradient": "g = softmax(logits) − onehot(label): how the last layer would change to fit this example. "
                "Near 0 for an example the model already gets right with confidence.",
    "medoid": "an example chosen to stand for a group (cluster) of examples of its class whose gradients are alike.",
    "cluster size": "how many examples of its class a medoid stands for.",
    "isolated": "a medoid that stands only for itself (cluster size 1). EPIC drops it for good.",
    "poison": "a training example the attacker altered (ground truth, known only in experiments).",
    "target": "the test image the attacker wants misclassified as the adversarial class.",
}


# --- where runs are ------------------------------------------------------------------------


def _argv_runs_dir() -> str | None:
    """``--runs-dir DIR`` given after ``--`` to ``streamlit run dashboard/app.py``."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--runs-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--runs-dir="):
            return arg.split("=", 1)[1]
    return None


def runs_dirs() -> list[Path]:
    """The folders runs are read from: ``--runs-dir`` or ``POISONLENS_RUNS`` (default ``runs/``),
    then the bundled samples (``POISONLENS_SAMPLES``, default ``sample_data/runs``; empty = none)."""
    chosen = _argv_runs_dir() or os.environ.get("POISONLENS_RUNS") or DEFAULT_RUNS
    roots = [Path(p).expanduser() for p in chosen.split(os.pathsep) if p]
    samples = os.environ.get("POISONLENS_SAMPLES", str(SAMPLE_RUNS))
    roots += [Path(p).expanduser() for p in samples.split(os.pathsep) if p]
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in [u.resolve() for u in unique]:
            unique.append(root)
    return unique


def new_runs_dir() -> Path:
    """Where the New run page creates runs: the first runs folder."""
    return runs_dirs()[0]


# --- cached loaders ------------------------------------------------------------------------


def run_stamp(path: str | Path) -> float:
    """Changes whenever a run gains an epoch or changes status (the key of per-run caches)."""
    path = Path(path)
    stamp = 0.0
    for name in (RUN_JSON, METRICS, "progress.json"):
        try:
            stamp = max(stamp, (path / name).stat().st_mtime)
        except FileNotFoundError:
            pass
    return stamp


@st.cache_data(ttl=2, show_spinner=False)
def cached_run_list(roots: tuple[str, ...]) -> list[dict]:
    return [info.__dict__ for info in list_runs(*roots)]


@st.cache_data(max_entries=32, show_spinner=False)
def load_metrics(path: str, stamp: float) -> pd.DataFrame:
    return open_run(path).metrics()


@st.cache_data(max_entries=32, show_spinner=False)
def load_targets(path: str, stamp: float) -> pd.DataFrame:
    return open_run(path).targets()


@st.cache_data(max_entries=16, show_spinner=False)
def load_examples(path: str) -> pd.DataFrame:
    return open_run(path).examples()


@st.cache_data(max_entries=16, show_spinner=False)
def load_snapshot_epochs(path: str, stamp: float) -> list[int]:
    return open_run(path).snapshot_epochs()


@st.cache_data(max_entries=128, show_spinner=False)
def load_snapshot(path: str, epoch: int, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """A snapshot (files are written once, so (path, epoch) is a safe key); missing columns skipped."""
    run = open_run(path)
    if columns is not None:
        have = set(run.snapshot_columns(epoch))
        columns = tuple(c for c in columns if c in have)
    return run.snapshot(epoch, columns=list(columns) if columns is not None else None)


@st.cache_data(max_entries=16, show_spinner=False)
def load_snapshot_columns(path: str, epoch: int) -> list[str]:
    return open_run(path).snapshot_columns(epoch)


@st.cache_data(max_entries=8, show_spinner=False)
def projection_by_epoch(path: str, method: str, mtime: float) -> dict[int, pd.DataFrame]:
    frame = open_run(path).projection(method)
    if frame is None:
        return {}
    return {int(e): g.reset_index(drop=True) for e, g in frame.groupby("epoch")}


def projection_mtime(path: str, method: str) -> float:
    try:
        return (Path(path) / "projections" / f"{method}.parquet").stat().st_mtime
    except FileNotFoundError:
        return 0.0


@st.cache_data(max_entries=256, show_spinner=False)
def load_projection_epoch(path: str, method: str, epoch: int, mtime: float) -> pd.DataFrame | None:
    """One snapshot's rows of the stored projection (x, y per index; the target has index -1)."""
    return projection_by_epoch(path, method, mtime).get(int(epoch))


@st.cache_data(max_entries=64, show_spinner=False)
def projection_extent(path: str, method: str, mtime: float, label: int | None = None) -> tuple[list[float], list[float]]:
    """Fixed axis ranges over every epoch, so the map holds still while examples move (only the
    examples of class ``label`` when given, and the target when it is that class's attacker)."""
    frames = projection_by_epoch(path, method, mtime)
    if not frames:
        return [0.0, 1.0], [0.0, 1.0]
    allxy = pd.concat(frames.values())
    if label is not None:
        labels = load_examples(path)["label"].to_numpy()
        index = allxy["index"].to_numpy()
        target = open_run(path).target
        keep = np.where(index >= 0, labels[np.clip(index, 0, None)] == label,
                        bool(target) and target.get("adv_label") == label)
        allxy = allxy[keep]
    out = []
    for col in ("x", "y"):
        lo, hi = float(allxy[col].min()), float(allxy[col].max())
        pad = 0.04 * (hi - lo or 1.0)
        out.append([lo - pad, hi + pad])
    return out[0], out[1]


@st.cache_data(max_entries=128, show_spinner=False)
def drift_at(path: str, epoch: int, stamp: float) -> pd.DataFrame:
    """Drift and similarity to the target of every example at one snapshot (core.drift)."""
    grad_cols = tuple(c for c in load_snapshot_columns(path, epoch) if c.startswith("g_"))
    snap = load_snapshot(path, epoch, ("label", "active", "is_medoid", *grad_cols))
    targets = load_targets(path, stamp)
    target_grad = None
    if not targets.empty and (targets["epoch"] == epoch).any():
        target_grad = targets.loc[targets["epoch"] == epoch, list(grad_cols)].to_numpy(np.float64)[0]
    medoids = snap["is_medoid"].fillna(False).to_numpy(bool) if "is_medoid" in snap else None
    scores = drift_scores(snap[list(grad_cols)].to_numpy(np.float32), snap["label"].to_numpy(),
                          medoids=medoids, active=snap["active"].to_numpy(bool), target_grad=target_grad)
    return scores.assign(index=np.arange(len(scores)), epoch=epoch)


# --- thumbnails ----------------------------------------------------------------------------


def thumbnail_uri(image: np.ndarray, size: int = 56) -> str:
    """A uint8 (h, w, c) image as a PNG data URI, scaled up with crisp pixels to ``size`` wide."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    pil = Image.fromarray(np.ascontiguousarray(image))
    if pil.width < size:
        scale = max(1, size // pil.width)
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@st.cache_data(max_entries=64, show_spinner=False)
def thumbnails(path: str, indices: tuple[int, ...], size: int = 56) -> list[str]:
    """Data URIs of a few training images, read memory-mapped (a big run is not loaded)."""
    images = open_run(path).images()
    return [thumbnail_uri(images[i], size) for i in indices]


@st.cache_data(max_entries=16, show_spinner=False)
def target_thumbnail(path: str, size: int = 96) -> str | None:
    image = open_run(path).target_image()
    return None if image is None else thumbnail_uri(image, size)


SHADES = " ░▒▓█"


def text_thumbnail(image: np.ndarray, width: int = 8) -> str:
    """A tiny grey picture made of block characters (lines joined by <br>), for plotly hovers."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img.mean(-1)
    h, w = img.shape
    step = max(1, int(np.ceil(w / width)))
    small = img[: h - h % step or h, : w - w % step or w]
    small = small.reshape(small.shape[0] // step, step, small.shape[1] // step, step).mean((1, 3))
    lo, hi = float(small.min()), float(small.max())
    levels = np.zeros_like(small, dtype=int) if hi <= lo else ((small - lo) / (hi - lo) * (len(SHADES) - 1)).round().astype(int)
    return "<br>".join("".join(SHADES[v] * 2 for v in row) for row in levels)


@st.cache_data(max_entries=8, show_spinner=False)
def text_thumbnails(path: str, n_max: int = 3000) -> list[str] | None:
    """Block-character thumbnails of every training image, or None for a run with more than ``n_max``."""
    images = open_run(path).images()
    if len(images) > n_max:
        return None
    return [text_thumbnail(img) for img in images]


# --- pickers -------------------------------------------------------------------------------


def _sync_run() -> None:
    st.session_state["_run"] = st.session_state["run_picker"]
    st.query_params["run"] = st.session_state["run_picker"]
    st.session_state.pop("_epoch", None)
    st.session_state.pop("_selected", None)
    st.query_params.pop("epoch", None)


def run_picker_ui() -> Run | None:
    """The run picker in the sidebar: the run named by ``?run=``, else the last one chosen, else
    the newest. Returns the opened run, or None (with a message) when there is none."""
    roots = runs_dirs()
    infos = cached_run_list(tuple(str(r) for r in roots))
    if not infos:
        where = ", ".join(f"`{r}`" for r in roots)
        st.info(f"No runs found in {where}. Start one on the **New run** page, or from a shell:  \n"
                "`poisonlens train --epochs 12 --defense epic --subset-size 0.2 --drop-after 2 --name my-run`")
        return None
    paths = [str(i["path"]) for i in infos]
    by_name = {i["name"]: str(i["path"]) for i in infos}
    labels = {str(i["path"]): f"{STATUS_ICONS.get(i['status'], '')} {i['name']} · {i['defense']}" for i in infos}
    asked = st.query_params.get("run")
    asked_path = by_name.get(asked, asked if asked in paths else None)
    chosen = st.session_state.get("_run")
    if asked_path:  # a link names the run (the picker's callback keeps ?run= up to date)
        chosen = asked_path
    if chosen not in paths:
        chosen = paths[0]
    st.session_state["_run"] = chosen
    st.session_state["run_picker"] = chosen
    st.sidebar.selectbox("Run", paths, format_func=lambda p: labels[p], key="run_picker", on_change=_sync_run,
                         help="Runs in " + ", ".join(str(r) for r in roots) + ", newest first.")
    name = Path(chosen).name
    st.query_params["run"] = name if by_name.get(name) == chosen else chosen
    try:
        run = open_run(chosen)
    except InputError as err:
        st.error(f"Cannot open this run: {err}")
        return None
    info = next(i for i in infos if str(i["path"]) == chosen)
    st.sidebar.caption(f"{STATUS_ICONS.get(info['status'], '')} {info['status']} · epoch "
                       f"{max(info['epochs_done'], 0)}/{info['epochs']} · `{chosen}`")
    return run


def _sync_epoch(key: str) -> None:
    st.session_state["_epoch"] = st.session_state[key]
    st.query_params["epoch"] = str(st.session_state[key])


def epoch_picker_ui(epochs: list[int], *, key: str, label: str = "Snapshot epoch",
                    help: str | None = None, container=st) -> int:
    """A slider over snapshot epochs, shared between pages and kept in ``?epoch=``."""
    asked = st.query_params.get("epoch")
    chosen = st.session_state.get("_epoch")
    if chosen not in epochs and asked is not None and asked.lstrip("-").isdigit() and int(asked) in epochs:
        chosen = int(asked)
    if chosen not in epochs:
        chosen = epochs[-1]
    st.session_state["_epoch"] = chosen
    st.session_state[key] = chosen
    if len(epochs) == 1:
        container.caption(f"{label}: {epochs[0]} (the only snapshot so far)")
    else:
        container.select_slider(label, options=epochs, key=key, on_change=_sync_epoch, args=(key,), help=help)
    st.query_params["epoch"] = str(chosen)
    return int(chosen)


# --- small display helpers -----------------------------------------------------------------


def page_header(title: str, explanation: str) -> None:
    st.title(title)
    st.caption(explanation)


def glossary_ui() -> None:
    with st.sidebar.expander("Words used here"):
        for word, meaning in GLOSSARY.items():
            st.markdown(f"**{word}**: {meaning}")


def has_ground_truth(path: str) -> bool:
    return bool(load_examples(path)["is_poison"].any())


def dropped_text(dropped_epoch: pd.Series) -> pd.Series:
    """'kept' or the epoch an example was dropped at, for tables."""
    return dropped_epoch.map(lambda e: "kept" if e < 0 else str(int(e)))


def class_name_list(run: Run, n_classes: int | None = None) -> list[str]:
    names = run.class_names
    if n_classes is not None and len(names) < n_classes:
        names = names + [str(c) for c in range(len(names), n_classes)]
    return names
