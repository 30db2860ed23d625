"""Compare: runs side by side, per defense, and which poisons each defense catches."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from poisonlens.compare import (
    NO_POISONS,
    comparison_table,
    find_runs,
    overlap_summary,
    per_defense_summary,
    poison_overlap,
    runs_of_one_poison_set,
)
from poisonlens.dashboard.common import (
    PLOTLY_CONFIG,
    REPO,
    STATUS_ICONS,
    cached_run_list,
    glossary_ui,
    load_targets,
    md,
    page_header,
    run_stamp,
    runs_dirs,
)
from poisonlens.dashboard.figures.compare import defense_bars_figure, overlap_figure
from poisonlens.errors import InputError
from poisonlens.evaluate import SCENARIOS, to_markdown
from poisonlens.store import open_run

PAGE = {"title": "Compare", "icon": ":material/compare_arrows:", "order": 50}

SCENARIO_HELP = {
    "scratch": "the victim trains from random weights",
    "transfer": "a frozen pretrained body, a new last layer",
    "finetune": "the whole pretrained network at a small learning rate",
}
RESULTS_ENV = "POISONLENS_RESULTS"  # where evaluate output folders are looked for
FOLDER, PICKED = "an evaluate output folder", "runs I pick"


# --- where the runs are --------------------------------------------------------------------


def results_root() -> Path:
    """The folder searched for evaluate results (``RESULTS_ENV`` or ``results/``)."""
    return Path(os.environ.get(RESULTS_ENV) or REPO / "results").expanduser()


def evaluate_folders(root: Path) -> list[Path]:
    """``root`` and the folders directly under it that hold an evaluate output (runs.csv or runs/),
    newest first.

    Parameters
    ----------
    root : Path
        A runs folder.
    """
    if not root.is_dir():
        return []
    found = []
    # `poisonlens evaluate --out results/` makes the folder itself the output
    for folder in [root, *root.iterdir()]:
        marks = [folder / "runs.csv", folder / "runs"]
        stamps = [m.stat().st_mtime for m in marks if m.exists()]
        if folder.is_dir() and stamps:
            found.append((max(stamps), folder))
    return [f for _, f in sorted(found, reverse=True)]


# --- cached computations (poisonlens.compare) ----------------------------------------------------


@st.cache_data(max_entries=16, show_spinner="Reading the runs…")
def table_of(paths: tuple[str, ...], stamps: tuple[float, ...]) -> pd.DataFrame:
    """The comparison table of the runs at ``paths`` (``stamps`` key the cache).

    Parameters
    ----------
    paths : tuple of str
        The runs compared (their folders).
    stamps : tuple of float
        Each run's ``run_stamp``, in the order of ``paths`` (the cache key).
    """
    return comparison_table(paths)


@st.cache_data(max_entries=32, show_spinner=False)
def overlap_of(paths: tuple[str, ...], stamps: tuple[float, ...]) -> pd.DataFrame:
    """Which poisons each run dropped by its last snapshot (``stamps`` key the cache).

    Parameters
    ----------
    paths, stamps : tuple of str, tuple of float
        As for :func:`table_of`: the runs' folders and their stamps.
    """
    return poison_overlap(paths)


# --- choosing the runs ---------------------------------------------------------------------


def _sync_folder() -> None:
    st.query_params["folder"] = st.session_state["cmp_folder"]


def folder_ui() -> list[str]:
    """An evaluate output folder (or any folder of runs), kept in ``?folder=``."""
    found = evaluate_folders(results_root())
    if "cmp_folder" not in st.session_state:
        asked = st.query_params.get("folder")
        st.session_state["cmp_folder"] = asked or (str(found[0]) if found else "")
    folder = st.text_input(
        "Evaluate output folder (the `--out` of `poisonlens evaluate`), or any folder of runs",
        key="cmp_folder",
        on_change=_sync_folder,
        placeholder="results/my-evaluation",
    ).strip()
    if len(found) > 1:
        st.caption(
            "Also under `"
            + str(results_root())
            + "`: "
            + ", ".join(md(f.name, 80) for f in found[1:6])
        )
    if not folder:
        st.info(
            f"No evaluate output found under `{results_root()}`. Make one with  \n"
            "`poisonlens evaluate --poisons poisons/ --defenses clean,none,epic-0.2,random-0.2 "
            "--seeds 0,1 --out results/my-evaluation`  \nor type a folder above, or pick runs instead."
        )
        return []
    st.query_params["folder"] = folder
    try:
        return [str(p) for p in find_runs(folder)]
    except InputError as err:
        st.error(md(err))
        return []


def picked_ui() -> list[str]:
    """Runs chosen from the run picker's folders."""
    roots = runs_dirs()
    infos = cached_run_list(tuple(str(r) for r in roots))
    if not infos:
        where = ", ".join(md(r) for r in roots)
        st.info(f"No runs found in {where}.")
        return []
    labels = {
        str(i["path"]): f"{STATUS_ICONS.get(i['status'], '')} {i['name']} · {i['defense']}"
        for i in infos
    }
    asked = [a for a in st.query_params.get("runs", "").split(",") if a]
    if asked and not st.session_state.get("_cmp_runs_asked"):  # a link (New run's retrain) names them
        st.session_state["_cmp_runs_asked"] = True
        st.session_state["cmp_runs"] = [p for p in labels if any(_same_run(p, a) for a in asked)]
    elif "cmp_runs" not in st.session_state:  # first visit: runs of one poison set (the sample's)
        st.session_state["cmp_runs"] = [str(p) for p in runs_of_one_poison_set(list(labels))]
    st.session_state["cmp_runs"] = [p for p in st.session_state.get("cmp_runs", []) if p in labels]
    picked = st.multiselect(
        "Runs",
        list(labels),
        format_func=labels.get,
        key="cmp_runs",
        placeholder="pick two or more runs",
        help="Runs in " + ", ".join(str(r) for r in roots) + ", newest first.",
    )
    if not picked:
        st.info("Pick the runs to compare: for example the same poison set under several defenses.")
    return picked


def _same_run(path: str, asked: str) -> bool:
    """Whether ``asked`` (a path or a run name from a link) is the run at ``path``."""
    try:
        return path == asked or Path(path).resolve() == Path(asked).resolve() or Path(path).name == asked
    except OSError:
        return False


def source_ui() -> list[str]:
    """Let the user compare an evaluate folder or picked runs; return the run paths."""
    if st.query_params.get("runs") and not st.session_state.get("_cmp_runs_asked"):
        st.session_state["cmp_source"] = PICKED
    if "cmp_source" not in st.session_state:
        folders = st.query_params.get("folder") or evaluate_folders(results_root())
        st.session_state["cmp_source"] = FOLDER if folders else PICKED
    source = st.radio("Compare", [FOLDER, PICKED], key="cmp_source", horizontal=True)
    return folder_ui() if source == FOLDER else picked_ui()


# --- drawing -------------------------------------------------------------------------------


def headline_ui(table: pd.DataFrame, n_listed: int) -> pd.DataFrame:
    """One line on what is compared; returns the finished runs.

    Parameters
    ----------
    table : DataFrame
        ``table_of``: a row per run compared.
    n_listed : int
        How many runs were picked (some may not be finished).
    """
    done = table[table["status"] == "finished"]
    seeds = sorted(done["seed"].unique().tolist())
    n_sets = done.loc[done["poison_set"] != NO_POISONS, "poison_set"].nunique()
    n_defenses = done["defense"].nunique()
    st.markdown(
        f"**{done['run'].nunique()} finished runs** of {plural(n_defenses, 'defense')} on "
        f"{plural(n_sets, 'poison set')}, {plural(len(seeds), 'seed')} "
        f"({', '.join(md(x, 20) for x in seeds)})."
    )
    waiting = n_listed - len(done)
    if waiting:
        st.warning(
            f"{waiting} run(s) have not finished (still training, failed, interrupted or not started): "
            "the charts and the overlap use finished runs only; the table lists the others with "
            "their status."
        )
    return done


def plural(n: int, word: str) -> str:
    """``1 seed``, ``2 seeds``.

    Parameters
    ----------
    n : int
        The count.
    word : str
        The noun, singular (an 's' is added unless ``n`` is 1).
    """
    return f"{n} {word}{'' if n == 1 else 's'}"


def fit_labels(fig, *, x_labels=(), y_labels=()):
    """Room for the tick labels, so that long defense and run names are not cut off.

    Parameters
    ----------
    fig : go.Figure
        The figure, changed in place and returned.
    x_labels : iterable of str or None
        The x axis's labels, as drawn (their longest line sets the bottom margin).
    y_labels : iterable of str or None
        The y axis's labels, as drawn (the longest sets the left margin).
    """
    longest_x = max((len(str(t)) for t in x_labels), default=0)
    longest_y = max((len(str(t)) for t in y_labels), default=0)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    margin = fig.layout.margin
    fig.update_layout(
        margin=dict(
            l=max(margin.l or 0, 7 * longest_y + 20),
            b=max(margin.b or 0, 5 * longest_x + 40),
            t=margin.t,
            r=margin.r,
        )
    )
    return fig


def _sync_scenario() -> None:
    st.query_params["scenario"] = st.session_state["cmp_scenario"]


def scenario_ui(table: pd.DataFrame) -> pd.DataFrame:
    """The scenario facet (scratch, transfer, finetune): one at a time, kept in ``?scenario=``.

    Parameters
    ----------
    table : DataFrame
        ``table_of``: a row per run, with its scenario tag.
    """
    scenarios = [s for s in SCENARIOS if s in set(table["scenario"])]
    scenarios += sorted(set(table["scenario"]) - set(scenarios))
    if len(scenarios) == 1:
        st.caption(f"Scenario: **{md(scenarios[0], 60)}** ({SCENARIO_HELP.get(scenarios[0], '')}).")
        return table
    if st.session_state.get("cmp_scenario") not in scenarios:
        asked = st.query_params.get("scenario")
        st.session_state["cmp_scenario"] = asked if asked in scenarios else scenarios[0]
    chosen = st.radio(
        "Scenario",
        scenarios,
        key="cmp_scenario",
        horizontal=True,
        on_change=_sync_scenario,
        format_func=lambda s: f"{md(s, 60)} ({(table['scenario'] == s).sum()} runs)",  # radio labels are Markdown
        help="; ".join(f"{k}: {v}" for k, v in SCENARIO_HELP.items()),
    )
    return table[table["scenario"] == chosen]


def bars_ui(done: pd.DataFrame) -> None:
    """Show the per-defense bar chart of finished runs and its caption.

    Parameters
    ----------
    done : DataFrame
        The finished runs of ``table_of``, a row per run.
    """
    st.markdown("##### Per defense")
    summary = per_defense_summary(done)
    fig = fit_labels(defense_bars_figure(summary), x_labels=summary["defense"])
    st.plotly_chart(fig, width="stretch", key="cmp_bars", config=PLOTLY_CONFIG)
    st.caption(
        "Bars: mean over poison sets and seeds; black error bars: ± one standard deviation (hover for "
        "the number of runs). **Attack success**: share of runs whose target test image ends up "
        "predicted as the attacker's class; a defense works when its bar is below `none` (no "
        "defense) and close to `clean` (the poisons restored to their original images: any flip "
        "there happens without an attack). Red dashes: what dropping as many examples **at random** "
        "would give; a defense whose recall or precision bar does not rise above its red dash found "
        "the poisons no better than chance."
    )
    if summary["controlled_success_n"].sum() > 0:
        st.caption(
            "Controlled success counts a flip only where the clean control of the same scenario "
            "and seed does not flip the same target; in brackets, 95% Wilson intervals over poison "
            "sets × seeds (table below)."
        )
    with st.expander("The same as a table (as in summary.md)"):
        st.code(to_markdown(summary), language="markdown")  # run-controlled names: shown as text


def retrain_ui(paths: list[str], table: pd.DataFrame) -> None:
    """For a run retrained without the examples marked poison (``tags.retrain_of``; or, of two runs
    picked, the one trained with ``--exclude``) and the run it came from, both picked: the two side by side, and whether leaving them out changed the target's
    prediction and the accuracy.

    Parameters
    ----------
    paths : list of str
        The runs compared (their folders).
    table : DataFrame
        ``table_of``: a row per run.
    """
    runs = {p: open_run(p) for p in paths}
    by_name = {r.name: p for p, r in runs.items()}
    for path, run in runs.items():
        tags = run.config.get("tags") if isinstance(run.config.get("tags"), dict) else {}
        source = by_name.get(str(tags.get("retrain_of", "")))
        exclude = run.meta.get("exclude") if isinstance(run.meta.get("exclude"), dict) else None
        if source is None and len(runs) == 2 and exclude is not None:  # e.g. `train --exclude` from a shell
            source = next(p for p in runs if p != path)
        if source is None or exclude is None:
            continue
        rows = []
        for p, label in ((source, "as reviewed"), (path, "retrained without them")):
            r = runs[p]
            facts = table[table["run"] == r.name]
            row = {"run": r.name, "": label,
                   "left out": int(r.meta.get("exclude", {}).get("count", 0)) if p == path else 0}
            if len(facts):
                f = facts.iloc[0]
                flipped = None if pd.isna(f["attack_success"]) else bool(f["attack_success"] == 1.0)
                row.update({"clean acc": f["test_acc"], "target flipped": flipped,
                            "p(attacker's class)": f["target_prob_adv"], "dropped": f["n_dropped"]})
            targets = load_targets(p, run_stamp(p))
            if not targets.empty and r.class_names:
                predicted = int(targets.sort_values("epoch")["prediction"].iloc[-1])
                row["target predicted as"] = (r.class_names[predicted] if 0 <= predicted < len(r.class_names)
                                              else str(predicted))
            rows.append(row)
        st.markdown(f"##### {md(run.name)}: {md(runs[source].name)} without {md(exclude.get('count'))} "
                    f"examples (--exclude {md(Path(str(exclude.get('file'))).name)})")
        side = pd.DataFrame(rows)
        st.dataframe(side, hide_index=True, width="stretch",
                     column_config={"clean acc": st.column_config.NumberColumn(format="percent"),
                                    "p(attacker's class)": st.column_config.NumberColumn(format="%.2f")})
        if len(side) == 2 and "target predicted as" in side:
            before, after = side["target predicted as"].tolist()
            change = "changed" if before != after else "did not change"
            acc = side["clean acc"].tolist() if "clean acc" in side else [None, None]
            st.markdown(f"Leaving them out **{change}** the target's prediction ({md(before)} → {md(after)})"
                        + (f"; clean accuracy {acc[0]:.1%} → {acc[1]:.1%}." if None not in acc else "."))


def table_columns() -> dict:
    """The run table's column titles, formats and explanations (hover a title)."""
    pct = "percent"
    return {
        "poison_set": "poison set",
        "test_acc": st.column_config.NumberColumn("clean acc", format=pct),
        "attack_success": st.column_config.CheckboxColumn(
            "target flipped", help="The target is predicted as the attacker's class."
        ),
        "controlled_success": st.column_config.CheckboxColumn(
            "flipped, not in control",
            help="Flipped, and the clean control of the same scenario and seed does not "
            "flip this target (empty: no control among these runs).",
        ),
        "roc_auc": st.column_config.NumberColumn(
            "ROC-AUC",
            format="%.2f",
            help="Of the defense's score, poison vs clean, mean over the drop window.",
        ),
        "target_prob_adv": st.column_config.NumberColumn(
            "p(attacker's class)",
            format="%.2f",
            help="The target's probability of the attacker's class.",
        ),
        "recall": st.column_config.NumberColumn(
            "recall", format=pct, help="Share of the poisons dropped."
        ),
        "precision": st.column_config.NumberColumn(
            "precision", format=pct, help="Share of the dropped examples that are poisons."
        ),
        "n_dropped": st.column_config.NumberColumn("dropped", help="Examples dropped in all."),
        "n_poisons": st.column_config.NumberColumn(
            "poisons", help="Poisons in the training set (0 under the clean control)."
        ),
        "seconds": st.column_config.NumberColumn("seconds", format="%.1f"),
    }


def table_ui(table: pd.DataFrame) -> None:
    """Show the table of every run.

    Parameters
    ----------
    table : DataFrame
        ``table_of``: a row per run.
    """
    st.markdown("##### Every run")
    order = ["run", "poison_set", "defense", "seed", "status", "test_acc", "attack_success"]
    order += ["controlled_success", "target_prob_adv", "recall", "precision", "n_dropped"]
    order += ["roc_auc", "n_poisons", "seconds"]
    if (table["status"] == "finished").all():
        order.remove("status")
    shown = table[order].copy()
    for col in ("attack_success", "controlled_success"):
        shown[col] = shown[col].map({1.0: True, 0.0: False}).astype("boolean")
    st.dataframe(shown, hide_index=True, width="stretch", column_config=table_columns())
    st.caption(
        "The numbers at each run's last finished epoch, recomputed from the run stores: the same as "
        "the `runs.csv` that `poisonlens evaluate` writes. *None*: undefined (recall without poisons, "
        "precision without drops)."
    )


def poison_set_ui(done: pd.DataFrame, sets: list[str]) -> tuple[str, pd.DataFrame]:
    """Pick the poison set compared (and, when its runs have several seeds, one seed or all);
    returns the set and its runs.

    Parameters
    ----------
    done : DataFrame
        The finished runs of ``table_of``, a row per run.
    sets : list of str
        The poison sets among them (not empty).
    """
    c1, c2 = st.columns(2)
    chosen = c1.selectbox(
        "Poison set",
        sets,
        key="cmp_set",
        help="Poisons are compared within one poison set: each set has its own poisons.",
    )
    rows = done[done["poison_set"] == chosen]
    seeds = sorted(rows["seed"].unique().tolist())
    if len(seeds) > 1:
        if st.session_state.get("cmp_seed") not in ["all seeds", *seeds]:
            st.session_state.pop("cmp_seed", None)
        seed = c2.selectbox("Seed", ["all seeds", *seeds], key="cmp_seed")
        if seed != "all seeds":
            rows = rows[rows["seed"] == seed]
    return chosen, rows


def overlap_counts_ui(overlap: pd.DataFrame) -> int:
    """The poisons caught by all, some and none of the runs; returns how many poisons there are.

    Parameters
    ----------
    overlap : DataFrame
        ``overlap_of``: a row per poison, a bool column per run (caught or not).
    """
    counts = overlap_summary(overlap)
    cols = st.columns(4)
    cols[0].metric("Poisons", f"{counts['n_poisons']}")
    cols[1].metric(
        "Caught by all", f"{counts['caught_by_all']}", help="Dropped by every run shown."
    )
    cols[2].metric("Caught by some", f"{counts['caught_by_some']}")
    cols[3].metric(
        "Caught by none",
        f"{counts['caught_by_none']}",
        help="Still trained on at the end of every run shown.",
    )
    return counts["n_poisons"]


def overlap_ui(done: pd.DataFrame) -> None:
    """Show which poisons of one poison set each defense catches.

    Parameters
    ----------
    done : DataFrame
        ``table_of``'s finished runs; those with poisons are compared within a poison set.
    """
    st.markdown("##### Which poisons each defense catches")
    sets = sorted(done.loc[done["n_poisons"] > 0, "poison_set"].unique().tolist())
    if not sets:
        st.info("None of these runs trained on a poison set, so there are no poisons to catch.")
        return
    if st.session_state.get("cmp_set") not in sets:  # another folder: its own sets
        st.session_state.pop("cmp_set", None)
    chosen, rows = poison_set_ui(done, sets)
    paths = tuple(rows["path"])
    try:
        overlap = overlap_of(paths, tuple(run_stamp(p) for p in paths))
    except InputError as err:
        st.warning(md(err))
        return
    if overlap.shape[1] == 0:
        st.info(
            "No run of this poison set has a defense that drops examples (only `none` or `clean`), "
            "so none could catch a poison."
        )
        return
    n = overlap_counts_ui(overlap)
    fig = fit_labels(overlap_figure(overlap), y_labels=[f"{c}  (00 of 000)" for c in overlap])
    st.plotly_chart(fig, width="stretch", key="cmp_overlap", config=PLOTLY_CONFIG)
    st.caption(
        f"A column per poison of `{chosen}`, a row per run (with how many of the {n} poisons it "
        "caught): green = the defense had dropped that poison by its last snapshot, grey = the poison "
        "was still trained on. Columns that are green in every row are poisons every defense finds; "
        "all-grey columns are poisons that slipped past all of them. `none` and `clean` are left out: "
        "they drop nothing."
    )


def main() -> None:
    """Draw the Compare page."""
    page_header(
        "Compare",
        "Several training runs side by side: per defense, how often the attack still succeeded, how "
        "accurate the model stayed, and which poisons the defense caught. `clean` is the control: the "
        "same training with the poison rows restored to their original images, so a target flipped "
        "under `clean` happens without any attack and is no evidence of one.",
    )
    glossary_ui()
    paths = source_ui()
    if not paths:
        return
    try:
        table = table_of(tuple(paths), tuple(run_stamp(p) for p in paths))
    except InputError as err:
        st.error(f"Cannot read these runs: {md(err)}")
        return
    if table.empty:
        st.info("None of these runs has finished an epoch yet.")
        return
    if "scenario" in table:
        table = scenario_ui(table)
    done = headline_ui(table, len(table))
    retrain_ui(paths, table)
    if not done.empty:
        bars_ui(done)
    table_ui(table)
    if not done.empty:
        overlap_ui(done)


main()
