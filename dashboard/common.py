"""What every page shares: where runs are, the run and epoch pickers, cached loaders, thumbnails.

Pages read runs only through :mod:`poisonlens.store` and ask core for every computation; the
loaders here only cache. A file of a run that cannot be read raises :class:`poisonlens.store.DamagedFile`
(an InputError naming the file); :func:`damage_ui` shows it as one short message, and the
helpers here (snapshot list, thumbnails, target image) skip what they cannot read. Cached functions take run paths, epochs and a modification stamp,
never arrays (``st.cache_data`` pickles its arguments and copies its value on every call).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from poisonlens.drift import drift_scores
from poisonlens.errors import InputError, one_line
from poisonlens.store import METRICS, RUN_JSON, DamagedFile, Run, list_runs, open_run

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = "runs"
SAMPLE_RUNS = REPO / "sample_data" / "runs"
# plain characters (headless browsers often lack an emoji font)
STATUS_ICONS = {"running": "●", "finished": "✓", "failed": "✗", "interrupted": "‖", "unreadable": "⚠"}

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


# --- run-controlled text -----------------------------------------------------------------
#
# Everything a run folder controls (names, errors, config values, class names, tags, paths) is
# text, never Markdown or HTML: st.markdown, st.error, captions and titles all render Markdown
# (links, images that load from anywhere), so such text goes through md() first, or into
# st.text / st.code / a dataframe. plain() is the same for plotly labels, which read HTML.

_MD_SPECIAL = re.compile(r"([\\`*{}\[\]()#+!|<>~$&:])")  # ":" stops bare-URL autolinks
# "_" makes emphasis only at a word's edge (epoch_0002.parquet stays as written)
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# what makes a list, a heading or a rule only at the start of a line (one_line leaves no newline)
_MD_LEADING = re.compile(r"^(\d+)([.)])|^([-=])")


def md(text: object, limit: int = 300) -> str:
    """``text`` made inert inside Markdown: one printable line (control characters escaped),
    every character that makes a link, an image, HTML, emphasis, code, maths or a table
    backslash-escaped (and a leading list or heading marker), at most ``limit`` characters.

    Parameters
    ----------
    text : object
        Anything a run controls (a name, an error, a config value).
    limit : int
        The most characters kept (longer text is cut with an ellipsis).
    """
    escaped = _MD_UNDERSCORE.sub(r"\\_", _MD_SPECIAL.sub(r"\\\1", one_line(text, limit)))
    return _MD_LEADING.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", escaped)


def plain(text: object, limit: int = 120) -> str:
    """``text`` made inert for plotly labels and hovers (HTML-escaped, one line).

    Parameters
    ----------
    text : object
        Anything a run controls, for a plotly label or hover (which read HTML).
    limit : int
        The most characters kept.
    """
    return html.escape(one_line(text, limit))


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


def user_runs_dirs() -> list[Path]:
    """``--runs-dir`` or ``POISONLENS_RUNS`` (default ``runs/``): where the user's runs are."""
    chosen = _argv_runs_dir() or os.environ.get("POISONLENS_RUNS") or DEFAULT_RUNS
    return [Path(p).expanduser() for p in chosen.split(os.pathsep) if p]


def sample_runs_dirs() -> list[Path]:
    """The bundled samples: ``POISONLENS_SAMPLES`` (default ``sample_data/runs``; empty = none)."""
    samples = os.environ.get("POISONLENS_SAMPLES", str(SAMPLE_RUNS))
    return [Path(p).expanduser() for p in samples.split(os.pathsep) if p]


def runs_dirs() -> list[Path]:
    """The folders runs are read from: :func:`user_runs_dirs`, then :func:`sample_runs_dirs`."""
    roots = user_runs_dirs() + sample_runs_dirs()
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
    """Changes whenever a run gains an epoch or changes status (the key of per-run caches).

    Parameters
    ----------
    path : str or Path
        The run's folder; its run.json, metrics.parquet and progress.json are looked at (never through a link).
    """
    path = Path(path)
    stamp = 0.0
    for name in (RUN_JSON, METRICS, "progress.json"):
        try:
            stamp = max(stamp, os.lstat(path / name).st_mtime)  # a link is not followed
        except OSError:
            pass
    return stamp


@st.cache_data(ttl=2, show_spinner=False)
def cached_run_list(roots: tuple[str, ...]) -> list[dict]:
    """The runs under ``roots``, as dicts (cached for two seconds).

    Parameters
    ----------
    roots : tuple of str
        The runs folders, in listing order (a tuple: it is the cache key).
    """
    return [info.__dict__ for info in list_runs(*roots)]


@st.cache_data(max_entries=32, show_spinner=False)
def load_metrics(path: str, stamp: float) -> pd.DataFrame:
    """A run's metrics table (``stamp`` keys the cache to the run's last change).

    Parameters
    ----------
    path : str
        The run's folder; metrics.parquet is read from it.
    stamp : float
        ``run_stamp(path)``: a finished epoch changes it, and the table is read again.
    """
    return open_run(path).metrics()


@st.cache_data(max_entries=32, show_spinner=False)
def load_targets(path: str, stamp: float) -> pd.DataFrame:
    """A run's target-prediction table (``stamp`` keys the cache to the run's last change).

    Parameters
    ----------
    path : str
        The run folder holding targets.parquet (one row per epoch: the target's prediction).
    stamp : float
        Its run stamp (the cache key).
    """
    return open_run(path).targets()


@st.cache_data(max_entries=16, show_spinner=False)
def load_examples(path: str) -> pd.DataFrame:
    """A run's per-example table.

    Parameters
    ----------
    path : str
        The run's folder (examples.parquet is written once, so the path is the key).
    """
    return open_run(path).examples()


@st.cache_data(max_entries=16, show_spinner=False)
def snapshot_listing(path: str, stamp: float) -> tuple[list[int], dict[int, str]]:
    """(readable snapshot epochs, {damaged epoch: reason}); reads each file's footer only.

    Parameters
    ----------
    path : str
        Where the run is; only the footers of snapshots/epoch_*.parquet are read.
    stamp : float
        The run's stamp: a new snapshot changes it.
    """
    run = open_run(path)
    damaged = run.damaged_snapshots()
    return [e for e in run.snapshot_epochs() if e not in damaged], damaged


def load_snapshot_epochs(path: str, stamp: float) -> list[int]:
    """The snapshot epochs whose file can be read (a damaged one is left out: see
    :func:`snapshot_epochs_ui`, which also says so on the page).

    Parameters
    ----------
    path : str
        A run folder.
    stamp : float
        Changes whenever the run writes an epoch, so a new snapshot is listed.
    """
    return snapshot_listing(path, stamp)[0]


@st.cache_data(max_entries=128, show_spinner=False)
def load_snapshot(path: str, epoch: int, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """A snapshot (files are written once, so (path, epoch) is a safe key); missing columns skipped.

    Parameters
    ----------
    path : str
        The run's folder (snapshot files are written once, so path and epoch are the key).
    epoch : int
        Which snapshot (its epoch).
    columns : tuple of str or None
        The columns wanted (those the snapshot lacks are skipped); None: every column.
    """
    run = open_run(path)
    if columns is not None:
        have = set(run.snapshot_columns(epoch))
        columns = tuple(c for c in columns if c in have)
    return run.snapshot(epoch, columns=list(columns) if columns is not None else None)


@st.cache_data(max_entries=16, show_spinner=False)
def load_snapshot_columns(path: str, epoch: int) -> list[str]:
    """The column names of a run's snapshot of ``epoch``.

    Parameters
    ----------
    path : str
        The run's folder (snapshot files are written once, so path and epoch are the key).
    epoch : int
        The snapshot whose column names are listed (its footer only is read).
    """
    return open_run(path).snapshot_columns(epoch)


@st.cache_data(max_entries=8, show_spinner=False)
def projection_by_epoch(path: str, method: str, mtime: float) -> dict[int, pd.DataFrame]:
    """A run's stored map, split by epoch ({} when there is none); ``mtime`` keys the cache.

    Parameters
    ----------
    path : str
        The run whose projections/ folder holds the map.
    method : str
        'umap' or 'pca' (projections/METHOD.parquet).
    mtime : float
        That file's modification time; a recomputed map has a new one.
    """
    frame = open_run(path).projection(method)
    if frame is None:
        return {}
    return {int(e): g.reset_index(drop=True) for e, g in frame.groupby("epoch")}


def projection_mtime(path: str, method: str) -> float:
    """The modification time of a run's map file, 0.0 when there is none.

    Parameters
    ----------
    path : str
        The run's folder (projections/METHOD.parquet in it is looked at, never through a link).
    method : str
        Which map: 'umap' or 'pca'.
    """
    try:
        return os.lstat(Path(path) / "projections" / f"{method}.parquet").st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return 0.0


@st.cache_data(max_entries=256, show_spinner=False)
def load_projection_epoch(path: str, method: str, epoch: int, mtime: float) -> pd.DataFrame | None:
    """One snapshot's rows of the stored projection (x, y per index; the target has index -1).

    Parameters
    ----------
    path : str
        The run's folder.
    method : str
        The layout ('umap', 'pca').
    epoch : int
        The snapshot whose rows are wanted.
    mtime : float
        The map file's modification time (part of the cache key).
    """
    return projection_by_epoch(path, method, mtime).get(int(epoch))


@st.cache_data(max_entries=64, show_spinner=False)
def projection_extent(path: str, method: str, mtime: float, label: int | None = None) -> tuple[list[float], list[float]]:
    """Fixed axis ranges over every epoch, so the map holds still while examples move (only the
    examples of class ``label`` when given, and the target when it is that class's attacker).

    Parameters
    ----------
    path : str
        A run folder with a stored map.
    method : str
        Its layout, 'umap' or 'pca'.
    mtime : float
        When the map was last written: the ranges follow a recomputed map.
    label : int or None
        Only the examples of this class (and the target, when it is this class's attacker); None: every example.
    """
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
    """Drift and similarity to the target of every example at one snapshot (poisonlens.drift).

    Parameters
    ----------
    path : str
        The run's folder (its snapshot of ``epoch`` and its targets are read).
    epoch : int
        The snapshot measured.
    stamp : float
        The run's stamp, so that a target recorded later is taken into account.
    """
    grad_cols = tuple(c for c in load_snapshot_columns(path, epoch) if c.startswith("g_"))
    snap = load_snapshot(path, epoch, ("label", "active", "is_medoid", *grad_cols))
    try:
        targets = load_targets(path, stamp)
    except DamagedFile:  # no similarity to the target; the page names the file
        targets = pd.DataFrame()
    target_grad = None
    if not targets.empty and (targets["epoch"] == epoch).any():
        target_grad = targets.loc[targets["epoch"] == epoch, list(grad_cols)].to_numpy(np.float64)[0]
    medoids = snap["is_medoid"].fillna(False).to_numpy(bool) if "is_medoid" in snap else None
    scores = drift_scores(snap[list(grad_cols)].to_numpy(np.float32), snap["label"].to_numpy(),
                          medoids=medoids, active=snap["active"].to_numpy(bool), target_grad=target_grad)
    return scores.assign(index=np.arange(len(scores)), epoch=epoch)


# --- thumbnails ----------------------------------------------------------------------------


def thumbnail_uri(image: np.ndarray, size: int = 56) -> str:
    """A uint8 (h, w, c) image as a PNG data URI, scaled up with crisp pixels to ``size`` wide.

    Parameters
    ----------
    image : uint8 ndarray of shape (height, width) or (height, width, channels)
        One image.
    size : int
        The thumbnail's width in pixels (scaled up by a whole factor, nearest neighbour).
    """
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
def _thumbnails(path: str, indices: tuple[int, ...], size: int) -> list[str]:
    images = open_run(path).images()
    return [thumbnail_uri(images[i], size) for i in indices]


def thumbnails(path: str, indices: tuple[int, ...], size: int = 56) -> list[str | None]:
    """Data URIs of a few training images, read memory-mapped (a big run is not loaded).
    When images.npy cannot be read: a message on the page and None for every image.

    Parameters
    ----------
    path : str
        The run's folder (images.npy is read memory-mapped).
    indices : tuple of int
        The training examples wanted (a tuple: it is the cache key).
    size : int
        Each thumbnail's width in pixels.
    """
    try:
        return _thumbnails(path, tuple(indices), size)
    except DamagedFile as err:
        damage_ui(err, "Images are left out.")
        return [None] * len(indices)


@st.cache_data(max_entries=16, show_spinner=False)
def _target_thumbnail(path: str, size: int) -> str | None:
    image = open_run(path).target_image()
    return None if image is None else thumbnail_uri(image, size)


def target_thumbnail(path: str, size: int = 96) -> str | None:
    """The target test image as a data URI (None for a clean run or, with a message, a damaged file).

    Parameters
    ----------
    path : str
        The run's folder.
    size : int
        The thumbnail's width in pixels.
    """
    try:
        return _target_thumbnail(path, size)
    except DamagedFile as err:
        damage_ui(err, "The target image is left out.")
        return None


SHADES = " ░▒▓█"


def text_thumbnail(image: np.ndarray, width: int = 8) -> str:
    """A tiny grey picture made of block characters (lines joined by <br>), for plotly hovers.

    Parameters
    ----------
    image : ndarray of shape (height, width) or (height, width, channels)
        One image (colour is averaged to grey).
    width : int
        Characters per line (the image is resampled to this width).
    """
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
    """Block-character thumbnails of every training image, or None for a run with more than ``n_max``.

    Parameters
    ----------
    path : str
        The run's folder.
    n_max : int
        The most training images a run may have to get thumbnails (their hover text grows with it).
    """
    try:
        images = open_run(path).images()
    except DamagedFile:  # the hover goes without pictures; the selection table names the file
        return None
    if len(images) > n_max:
        return None
    return [text_thumbnail(img) for img in images]


# --- pickers -------------------------------------------------------------------------------


# every chart's modebar: no plotly logo and no button that sends the chart to a cloud service
PLOTLY_CONFIG = {
    "displaylogo": False,
    "showSendToCloud": False,
    "showEditInChartStudio": False,
    "modeBarButtonsToRemove": ["sendDataToCloud", "editInChartStudio"],
}
# what belongs to one run: forgotten when another run is opened (by the picker or a link)
RUN_STATE = ("_selected", "_gs_focus", "_gs_zoom", "_gs_last_event")


def _sync_run() -> None:
    if st.session_state["run_picker"] not in st.session_state.get("_run_paths", ()):
        # the browser sent a label that no longer names a run: the run's status icon changed
        # (e.g. running -> interrupted after Stop) between drawing the picker and this rerun
        return
    st.session_state["_run"] = st.session_state["run_picker"]
    st.query_params["run"] = st.session_state["run_picker"]
    st.session_state.pop("_epoch", None)
    st.session_state.pop("_selected", None)
    st.query_params.pop("epoch", None)


def _inside(path: Path, roots: list[Path]) -> bool:
    real = path.resolve()
    return any(real == r or real.parent == r for r in (root.resolve() for root in roots))


def sample_hint_ui(infos: list[dict]) -> None:
    """Say so when every run listed is a bundled sample (the user's folder is empty or missing).

    Parameters
    ----------
    infos : list of dict
        The listed runs (``cached_run_list``), each with its path.
    """
    user = user_runs_dirs()
    if any(_inside(Path(i["path"]), user) for i in infos):
        return
    where = ", ".join(f"`{r}`" for r in user)
    st.sidebar.info(f"No runs in {where} yet, so the bundled sample runs are shown. Read another folder with "
                    "`POISONLENS_RUNS=/path/to/runs make run` or `streamlit run dashboard/app.py -- --runs-dir DIR`; "
                    "`POISONLENS_SAMPLES=` hides the sample.")


def run_label(info: dict) -> str:
    """The picker's line for a run: status icon, name, defense (or that it cannot be read).

    Parameters
    ----------
    info : dict
        One listed run (``cached_run_list``): name, defense, status, and unreadable when damaged.
    """
    name, defense = one_line(info["name"], 80), one_line(info["defense"], 40)
    if info["status"] == "unreadable":
        return f"{STATUS_ICONS['unreadable']} {name} · unreadable"
    damaged = " · damaged" if info.get("unreadable") else ""
    return f"{STATUS_ICONS.get(info['status'], '')} {name} · {defense}{damaged}"


def run_picker_ui() -> Run | None:
    """The run picker in the sidebar: the run named by ``?run=``, else the last one chosen, else
    the newest. Returns the opened run, or None with a message on the page: when there is no
    run, when the link names a run that is not there, or when the chosen run cannot be opened.
    Runs that cannot be read are listed (marked unreadable), never dropped from the list."""
    roots = runs_dirs()
    infos = cached_run_list(tuple(str(r) for r in roots))
    if not infos:
        where = ", ".join(f"`{r}`" for r in roots)
        st.info(f"No runs found in {where}. Start one on the **New run** page, or from a shell:  \n"
                "`poisonlens train --epochs 12 --defense epic --subset-size 0.2 --drop-after 2 --name my-run`")
        return None
    sample_hint_ui(infos)
    paths = [str(i["path"]) for i in infos]
    by_name = {i["name"]: str(i["path"]) for i in infos}
    by_name.update({Path(p).name: p for p in paths if Path(p).name not in by_name})
    labels = {str(i["path"]): run_label(i) for i in infos}
    asked = st.query_params.get("run")
    asked_path = by_name.get(asked, asked if asked in paths else None)
    missing = bool(asked) and asked_path is None
    chosen = st.session_state.get("_run")
    if asked_path:  # a link names the run (the picker's callback keeps ?run= up to date)
        chosen = asked_path
    if chosen not in paths:
        chosen = paths[0]
    if st.session_state.get("_run") not in (None, chosen):  # another run, by any route
        for key in RUN_STATE:
            st.session_state.pop(key, None)
    st.session_state["_run"] = chosen
    st.session_state["_run_paths"] = paths
    st.session_state["run_picker"] = chosen
    st.sidebar.selectbox("Run", paths, format_func=lambda p: labels[p], key="run_picker", on_change=_sync_run,
                         help="Runs in " + ", ".join(str(r) for r in roots) + ", newest first.")
    if missing:  # keep the link as it is, and open nothing in its place
        where = ", ".join(f"`{r}`" for r in roots)
        st.error(f"The link names the run {md(asked)}, which is not in {where}. Pick a run in the sidebar.")
        return None
    name = Path(chosen).name
    st.query_params["run"] = name if by_name.get(name) == chosen else chosen
    info = next(i for i in infos if str(i["path"]) == chosen)
    try:
        run = open_run(chosen)
    except InputError as err:
        st.error(f"Cannot open the run {md(name)}: {md(err)}")
        return None
    st.sidebar.caption(f"{STATUS_ICONS.get(info['status'], '')} {info['status']} · epoch "
                       f"{max(info['epochs_done'], 0)}/{info['epochs']} · {md(chosen)}")
    if info.get("unreadable"):  # a link or special file in it, or damaged metrics: say so
        st.warning(f"This run is damaged: {md(info['unreadable'])}. What can be read is shown; "
                   "nothing is followed out of the run folder.")
    from poisonlens.dashboard.marking import review_caption_ui

    review_caption_ui(chosen)  # every run page shows the review's counts
    return run


def _sync_epoch(key: str) -> None:
    st.session_state["_epoch"] = st.session_state[key]
    st.query_params["epoch"] = str(st.session_state[key])


def epoch_picker_ui(epochs: list[int], *, key: str, label: str = "Snapshot epoch",
                    help: str | None = None, container=st, default: int | None = None) -> int:
    """A slider over snapshot epochs, shared between pages and kept in ``?epoch=``.

    Opens on the epoch in the address, else the one last chosen on any page, else ``default``
    (e.g. :func:`default_epoch`), else the last snapshot.

    Parameters
    ----------
    epochs : list of int
        The snapshot epochs offered, oldest first (not empty).
    key : str
        The slider's widget key, with the page's prefix (e.g. 'dr_epoch').
    label : str
        The slider's label.
    help : str or None
        The slider's tooltip.
    container : Streamlit container
        Where the slider goes (default: the page).
    default : int or None
        The epoch opened on when neither the address nor an earlier choice names one.
    """
    asked = st.query_params.get("epoch")
    chosen = st.session_state.get("_epoch")
    if chosen not in epochs and asked is not None and asked.lstrip("-").isdigit() and int(asked) in epochs:
        chosen = int(asked)
    if chosen not in epochs:
        chosen = default if default in epochs else epochs[-1]
    st.session_state["_epoch"] = chosen
    st.session_state[key] = chosen
    if len(epochs) == 1:
        container.caption(f"{label}: {epochs[0]} (the only snapshot)")
    else:
        container.select_slider(label, options=epochs, key=key, on_change=_sync_epoch, args=(key,), help=help)
    st.query_params["epoch"] = str(chosen)
    return int(chosen)


def default_epoch(run: Run, epochs: list[int] | None = None) -> int | None:
    """The snapshot a page opens on: the one that dropped the most examples (the earliest of
    ties), so a newcomer sees drops; the last snapshot when nothing was dropped (say why with
    :func:`no_drops_reason`). None when the run has no readable snapshot.

    Parameters
    ----------
    run : the opened run
    epochs : the snapshot epochs to choose from (default: the readable ones)
    """
    path = str(run.path)
    stamp = run_stamp(path)
    epochs = load_snapshot_epochs(path, stamp) if epochs is None else list(epochs)
    if not epochs:
        return None
    try:
        metrics = load_metrics(path, stamp)
    except DamagedFile:
        return epochs[-1]
    if metrics.empty or "n_new_drops" not in metrics:
        return epochs[-1]
    drops = dict(zip(metrics["epoch"].astype(int), metrics["n_new_drops"].fillna(0).astype(int), strict=False))
    best = max(epochs, key=lambda e: (drops.get(e, 0), -e))
    return best if drops.get(best, 0) > 0 else epochs[-1]


def no_drops_reason(run: Run) -> str | None:
    """Why a run dropped nothing, in one sentence (None when it dropped something).

    Parameters
    ----------
    run : poisonlens.store.Run
        The opened run (its config gives the defense and the drop window).
    """
    path = str(run.path)
    stamp = run_stamp(path)
    try:
        metrics = load_metrics(path, stamp)
    except DamagedFile:
        return None
    if len(metrics) and "n_dropped" in metrics and metrics["n_dropped"].iloc[-1] > 0:
        return None
    cfg = run.config
    defense = md(cfg.get("defense", "?"), 60)
    if defense == "none":
        return "The defense `none` never drops an example: this run is the undefended baseline."
    try:  # the trainer's window: the last epoch's snapshot never drops (nothing is left to train)
        lo, hi = int(cfg.get("drop_after", 0)), min(int(cfg.get("stop_after", 0)), int(cfg.get("epochs", 0)))
    except (TypeError, ValueError):
        return None
    epochs = load_snapshot_epochs(path, stamp)
    if not [e for e in epochs if lo <= e < hi]:
        return (f"No snapshot falls inside the drop window ({lo} ≤ epoch < {hi}: drop-after, and stop-after or "
                f"the last epoch), so {defense} could flag examples but never drop them.")
    return f"{defense} flagged no example at the snapshots inside the drop window ({lo} ≤ epoch < {hi})."


def no_snapshot_message(run: Run) -> str:
    """Why a page has no snapshot to show: the first is still to come, or the run has none.

    Parameters
    ----------
    run : poisonlens.store.Run
        The opened run (its status and folder are named).
    """
    if run.status == "running":
        return "This run has no gradient snapshot yet; the first is taken before training starts (epoch 0)."
    return (f"This run ({run.status}) has no readable gradient snapshot in {md(run.path / 'snapshots')}, "
            "so there is nothing to show here.")


def snapshot_epochs_ui(run: Run) -> list[int]:
    """The readable snapshot epochs of ``run``, with a message on the page for each damaged
    snapshot file (left out) and, when none is left, why there is nothing to show.

    Parameters
    ----------
    run : poisonlens.store.Run
        The opened run.
    """
    path = str(run.path)
    epochs, damaged = snapshot_listing(path, run_stamp(path))
    if damaged:
        files = "  \n".join(md(d) for d in damaged.values())
        st.warning(f"{len(damaged)} snapshot file{'s' if len(damaged) > 1 else ''} cannot be read and "
                   f"{'are' if len(damaged) > 1 else 'is'} left out (the other snapshots are shown):  \n{files}")
    if not epochs:
        st.info(no_snapshot_message(run))
    return epochs


def damage_ui(err: InputError, consequence: str = "", *, fatal: bool = False) -> None:
    """A short message naming the file that cannot be read and what the page does without it.

    Parameters
    ----------
    err : InputError
        The problem, naming the file (``err.source``) and what is wrong with it (``err.problem``).
    consequence : str
        What the page does without the file (Markdown, our own text).
    fatal : bool
        An error (the page stops) rather than a warning (the page goes on).
    """
    text = f"{md(err.source)} cannot be read: {md(err.problem)}. {consequence}".strip()
    (st.error if fatal else st.warning)(text)


# --- small display helpers -----------------------------------------------------------------


def page_header(title: str, explanation: str) -> None:
    """Show a page's title and the caption that explains it.

    Parameters
    ----------
    title : str
        The page's title.
    explanation : str
        One or two sentences (Markdown) saying what the page shows.
    """
    st.title(title)
    st.caption(explanation)


@dataclass(frozen=True)
class PageRun:
    """The run a page shows, as :func:`page_run_ui` opened it.

    Attributes
    ----------
    run : the opened run (read through :mod:`poisonlens.store`)
    path : its folder, as the cached loaders take it
    stamp : :func:`run_stamp` when the page was drawn (the key of per-run caches)
    epochs : its readable snapshot epochs, oldest first (empty when the page did not ask for them)
    """

    run: Run
    path: str
    stamp: float
    epochs: list[int]


def page_run_ui(title: str, explanation: str, *, snapshots: bool = True) -> PageRun | None:
    """How every run page opens: its title and caption, the glossary, the run picker and (for
    pages that draw snapshots) the readable snapshot epochs.

    Parameters
    ----------
    title, explanation : str
        As for :func:`page_header`.
    snapshots : bool
        Whether the page needs gradient snapshots: then a damaged snapshot is named and left
        out, and a run without a readable one ends the page with a message saying why.

    Returns
    -------
    PageRun, or None when there is nothing to draw (no run, a run that cannot be opened, or no
    readable snapshot); the page has then said why.
    """
    page_header(title, explanation)
    glossary_ui()
    run = run_picker_ui()
    if run is None:
        return None
    path = str(run.path)
    stamp = run_stamp(path)
    epochs = snapshot_epochs_ui(run) if snapshots else []
    if snapshots and not epochs:
        return None
    return PageRun(run=run, path=path, stamp=stamp, epochs=epochs)


def glossary_ui() -> None:
    """Show the glossary in a sidebar expander."""
    with st.sidebar.expander("Words used here"):
        for word, meaning in GLOSSARY.items():
            st.markdown(f"**{word}**: {meaning}")


def dropped_text(dropped_epoch: pd.Series) -> pd.Series:
    """'kept' or the epoch an example was dropped at, for tables.

    Parameters
    ----------
    dropped_epoch : Series of int
        The epoch each example was dropped at (-1: kept).
    """
    return dropped_epoch.map(lambda e: "kept" if e < 0 else str(int(e)))


def class_name_list(run: Run, n_classes: int | None = None) -> list[str]:
    """The run's class names, padded with class numbers up to ``n_classes``.

    Parameters
    ----------
    run : poisonlens.store.Run
        The opened run.
    n_classes : int or None
        Pad with class numbers up to this many names (labels past the stored names); None: as stored.
    """
    names = run.class_names
    if n_classes is not None and len(names) < n_classes:
        names = names + [str(c) for c in range(len(names), n_classes)]
    return names
