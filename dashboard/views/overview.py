"""Overview: a run's configuration and status, and what its defense did, epoch by epoch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from poisonlens.dashboard import common
from poisonlens.dashboard.common import STATUS_ICONS, PageRun, md
from poisonlens.dashboard.figures import overview as figures
from poisonlens.metrics import detection_metrics
from poisonlens.store import DamagedFile, open_run

PAGE = {"title": "Overview", "icon": ":material/monitoring:", "order": 10}

# --- cached computations -------------------------------------------------------------------


@st.cache_data(max_entries=16, show_spinner=False)
def detection_by_snapshot(path: str, stamp: float) -> pd.DataFrame:
    """Per snapshot: how the defense's score and flags separate poisons from clean examples
    (a snapshot that cannot be read is left out; the page names it).

    Parameters
    ----------
    path : str
        The run's folder: its examples (the ground truth) and every readable snapshot.
    stamp : float
        Its run stamp; each new snapshot adds a row.
    """
    is_poison = common.load_examples(path)["is_poison"].to_numpy(bool)
    rows = []
    for epoch in common.load_snapshot_epochs(path, stamp):
        try:
            snap = common.load_snapshot(path, epoch, ("active", "score", "suspect"))
        except DamagedFile:  # damaged past its footer
            continue
        if "score" not in snap:
            continue
        m = detection_metrics(is_poison, snap["suspect"].to_numpy(bool), snap["score"].to_numpy(float),
                              active=snap["active"].to_numpy(bool))
        rows.append({"epoch": epoch, "roc_auc": m.roc_auc, "n_suspect": m.n_suspect,
                     "true_positives": m.true_positives, "precision": m.precision, "recall": m.recall})
    return pd.DataFrame(rows, columns=["epoch", "roc_auc", "n_suspect", "true_positives", "precision", "recall"])


# --- drawing -------------------------------------------------------------------------------


def config_ui(run) -> None:
    """Show the run's configuration (and its target, if any) as a table.

    Parameters
    ----------
    run : poisonlens.store.Run
        The opened run (its run.json config and target).
    """
    cfg = run.config
    params = ", ".join(f"{k}={v}" for k, v in cfg.get("defense_params", {}).items()) or "defaults"
    target = run.target
    rows = {
        "data set": cfg.get("dataset"),
        "model": f"{cfg.get('model')} (width {cfg.get('width')}), {cfg.get('scenario')}",
        "epochs": f"{cfg.get('epochs')}, snapshot every {cfg.get('snapshot_every')} (T)",
        "defense": f"{cfg.get('defense')} ({params})",
        "drop window": f"snapshots at epochs {cfg.get('drop_after')} ≤ epoch < {cfg.get('stop_after')} may drop examples",
        "poison set": cfg.get("poisons") or "none (clean run)",
        "left out (--exclude)": excluded_text(run) or "nothing",
        "seed": cfg.get("seed"),
    }
    if target:
        names = run.class_names
        eps = "unbounded" if target.get("eps") is None else f"eps {target['eps']:g}/255"
        rows["attack"] = (f"{target.get('attack')}: {target.get('n_poisons')} poisons, {eps}; "
                          f"target = test image {target.get('target_index')} (class {names[target['target_label']]}), "
                          f"wanted as class {names[target['adv_label']]}")
    st.dataframe(pd.DataFrame({"setting": list(rows), "value": [str(v) for v in rows.values()]}),
                 hide_index=True, width="stretch")
    with st.expander("Full configuration (run.json)"):
        st.json(cfg, expanded=False)


def excluded_text(run) -> str | None:
    """What run.json records of ``--exclude``: how many examples (poisons among them) and from
    which file; None when the run trained on every example.

    Parameters
    ----------
    run : poisonlens.store.Run
        The opened run (run.json's ``exclude`` record).
    """
    record = run.meta.get("exclude")
    if not isinstance(record, dict) or not isinstance(record.get("count"), int):
        return None
    poisons = record.get("n_poisons")
    among = f" ({poisons} of them poisons)" if isinstance(poisons, int) and run.target else ""
    digest = md(str(record.get("sha256", ""))[:12])
    return f"{record['count']:,} examples{among}, listed in {md(record.get('file'))} (sha256 {digest}…)"


def excluded_ui(run) -> None:
    """Say that the run trained without some examples, and offer the comparison with its source.

    Parameters
    ----------
    run : poisonlens.store.Run
        The opened run (its ``retrain_of`` tag names the source run).
    """
    text = excluded_text(run)
    if text is None:
        return
    record = run.meta["exclude"]
    if record["count"] == 0:
        # e.g. a review export with no example marked poison yet: it contributes no rows
        st.info(f"Trained on every example: the `--exclude` file, {md(record.get('file'))} (sha256 "
                f"{md(str(record.get('sha256', ''))[:12])}…), listed none to leave out (a review export "
                "lists only the examples marked poison).")
        return
    tags = run.config.get("tags") if isinstance(run.config.get("tags"), dict) else {}
    source = tags.get("retrain_of")
    st.info(f"Trained without {text}: never in a training batch, never seen by the defense."
            + (f" Retrained from **{md(source)}** without the examples marked poison there." if source else ""))
    if source:
        st.page_link("views/compare.py", label=f"Compare with {md(source, 80)}", icon=":material/compare_arrows:",
                     query_params={"runs": f"{source},{run.path}"})


def headline_ui(run, metrics: pd.DataFrame, examples: pd.DataFrame, detection: pd.DataFrame) -> None:
    """Show the run's headline metrics: accuracy, the attack, drops, recall and precision.

    Parameters
    ----------
    run : poisonlens.store.Run
        The opened run.
    metrics : DataFrame
        metrics.parquet, a row per finished epoch (not empty; the last row is shown).
    examples : DataFrame
        The run's per-example table (is_poison: the ground truth).
    detection : DataFrame
        ``detection_by_snapshot`` (empty for a run without poisons).
    """
    last = metrics.iloc[-1]
    n = len(examples)
    n_poisons = int(examples["is_poison"].sum())
    cols = st.columns(5)
    cols[0].metric("Clean test accuracy", f"{last['test_acc']:.1%}", help="On the untouched test split, at the last finished epoch.")
    target = run.target
    if target and not pd.isna(last["target_prob_adv"]):
        adv = run.class_names[target["adv_label"]]
        cols[1].metric(f"Attack: target → class {adv}", "succeeds" if last["attack_success"] == 1 else "fails",
                       f"p(class {adv}) = {last['target_prob_adv']:.2f}", delta_color="off", delta_arrow="off",
                       help="Whether the model now predicts the attacker's class for the target test image.")
    else:
        cols[1].metric("Attack", "none", help="A clean run: no poison set, no target.")
    share = last["n_dropped"] / max(n, 1)
    cols[2].metric("Examples dropped", f"{int(last['n_dropped']):,}", f"{share:.1%} of the training set", delta_color="off", delta_arrow="off")
    if n_poisons:
        recall = last["n_poison_dropped"] / n_poisons
        cols[3].metric("Poisons dropped (recall)", f"{int(last['n_poison_dropped'])} of {n_poisons}",
                       f"{recall - share:+.1%} vs. a random drop", delta_color="normal",
                       help="A defense that dropped the same number of examples at random would drop, on average, "
                            "the same share of the poisons as of all examples.")
        precision = last["n_poison_dropped"] / last["n_dropped"] if last["n_dropped"] else float("nan")
        base = n_poisons / n
        cols[4].metric("Precision of the drops", "–" if np.isnan(precision) else f"{precision:.1%}",
                       f"base rate {base:.1%}", delta_color="off", delta_arrow="off",
                       help="Share of the dropped examples that are poisons. A random drop gets the base rate.")
        verdict_ui(run, last, n, n_poisons, detection)
    else:
        cols[3].metric("Poisons", "unknown", help="No ground truth: this run trained without a poison set.")


def verdict_ui(run, last, n: int, n_poisons: int, detection: pd.DataFrame) -> None:
    """One plain sentence on whether the defense found the poisons better than chance.

    Parameters
    ----------
    run : poisonlens.store.Run
        The opened run (its defense is named).
    last : Series
        metrics.parquet's last row (n_dropped, n_poison_dropped).
    n : int
        Training examples in the run.
    n_poisons : int
        Poisons among them (at least 1).
    detection : DataFrame
        ``detection_by_snapshot`` (its last AUROC is quoted).
    """
    share = last["n_dropped"] / max(n, 1)
    recall = last["n_poison_dropped"] / n_poisons
    defense = run.config.get("defense", "the defense")
    sentence = (f"**{defense}** dropped **{share:.1%}** of all training examples and **{recall:.1%}** of the poisons "
                f"({int(last['n_poison_dropped'])} of {n_poisons}). Dropping the same number of examples at random "
                f"would catch {share:.1%} of the poisons on average.")
    auc = detection["roc_auc"].dropna()
    if len(auc):
        sentence += (f" At the last snapshot the defense's score ranks a random poison above a random clean example "
                     f"with probability **{auc.iloc[-1]:.2f}** (AUROC; 0.5 = chance).")
    if recall > share * 1.5 and recall > 0:
        st.success(sentence + " The poisons were dropped more often than clean examples.")
    else:
        st.warning(sentence + " **The poisons were not dropped more often than clean examples**: on this run, the "
                   "defense's drops are no better than random at finding them.")


def live_ui(path: str, stamp: float) -> None:
    """Progress of a running run, re-read from the run store every 2 s; the whole page is redrawn
    when an epoch finishes or the status changes.

    Parameters
    ----------
    path : str
        The running run's folder, re-opened every 2 s.
    stamp : float
        The run's stamp when the page was drawn: once it changes, the whole page is redrawn.
    """

    @st.fragment(run_every=2)
    def progress() -> None:
        run = open_run(path)
        status = run.status
        try:
            prog = run.progress()
        except DamagedFile:  # being rewritten by hand, or damaged: the bar shows no epoch
            prog = {}
        epoch, epochs = prog.get("epoch", 0), prog.get("epochs", run.config.get("epochs", 1))
        if not (isinstance(epoch, int) and isinstance(epochs, int)):  # a foreign progress.json
            epoch, epochs = 0, 1
        st.progress(min(1.0, (epoch or 0) / max(epochs or 1, 1)),
                    text=f"{STATUS_ICONS.get(status, '')} {status}: epoch {epoch} of {epochs}, {prog.get('phase', 'starting')}")
        if status != "running" or common.run_stamp(path) != stamp:
            st.rerun()

    progress()


def status_ui(page: PageRun) -> None:
    """The run's name and status: live progress while it trains, the error of a failed run, how
    to continue an interrupted one, what it was trained without, and damaged snapshots.

    Parameters
    ----------
    page : PageRun
        The run the page shows.
    """
    run, path = page.run, page.path
    status = run.status
    st.subheader(f"{STATUS_ICONS.get(status, '')} {md(run.name)}")
    if status == "running":
        live_ui(path, page.stamp)
    elif status == "failed":
        st.error(f"This run failed: {md(run.meta.get('error') or 'no message recorded')}")
    elif status == "interrupted":
        st.warning("This run stopped without finishing (its process is gone). Continue it with "
                   f"poisonlens train --resume {md(path)}.")
    excluded_ui(run)
    _, damaged = common.snapshot_listing(path, page.stamp)
    if damaged:
        st.warning("Left out of the per-snapshot figures (cannot be read):  \n" + "  \n".join(md(d) for d in damaged.values()))


def figures_ui(run, metrics: pd.DataFrame, examples: pd.DataFrame, detection: pd.DataFrame) -> None:
    """The per-epoch figures: accuracy and the attack, drops, detection against chance, AUROC, time.

    Parameters
    ----------
    run : poisonlens.store.Run
        The run shown (its target names the attacker's class).
    metrics : DataFrame
        metrics.parquet, a row per finished epoch (not empty).
    examples : DataFrame
        The run's per-example table (is_poison: the ground truth).
    detection : DataFrame
        :func:`detection_by_snapshot` (empty for a run without poisons).
    """
    config = common.PLOTLY_CONFIG
    target = run.target
    adv_name = run.class_names[target["adv_label"]] if target else None
    left, right = st.columns(2)
    left.plotly_chart(figures.accuracy_figure(metrics, adv_name=adv_name), width="stretch", key="ov_acc", config=config)
    right.plotly_chart(figures.drops_figure(metrics, n_samples=len(examples)), width="stretch", key="ov_drops",
                       config=config)
    n_poisons = int(examples["is_poison"].sum())
    if n_poisons:
        st.markdown("##### Did the defense find the poisons?")
        st.caption("Left: if the red line (poisons dropped) stays on or below the dotted grey line (share of all examples "
                   "dropped), the defense caught no more poisons than dropping examples at random would. Right: the same "
                   "question as precision, against the share of poisons in the training set.")
        st.plotly_chart(figures.detection_figure(metrics, n_samples=len(examples), n_poisons=n_poisons),
                        width="stretch", key="ov_detect", config=config)
    left, right = st.columns(2)
    if len(detection) and detection["roc_auc"].notna().any():
        left.plotly_chart(figures.auroc_figure(detection), width="stretch", key="ov_auroc", config=config)
        left.caption("AUROC of the defense's per-example score (higher = more suspicious): the chance that a random poison "
                     "scores above a random clean example. Below 0.5: poisons look *less* suspicious than clean data.")
    (right if len(detection) else left).plotly_chart(figures.timing_figure(metrics), width="stretch", key="ov_time",
                                                     config=config)


def configuration_ui(run, metrics: pd.DataFrame) -> None:
    """The run's configuration, its target image and the per-epoch table.

    Parameters
    ----------
    run : poisonlens.store.Run
        The run shown.
    metrics : DataFrame
        metrics.parquet, a row per finished epoch.
    """
    st.markdown("##### Configuration")
    c1, c2 = st.columns([4, 1])
    with c1:
        config_ui(run)
    thumb = common.target_thumbnail(str(run.path))
    if thumb:
        c2.image(thumb, caption="the target test image", width=120)
    with st.expander("Per-epoch table (metrics.parquet)"):
        st.dataframe(metrics.drop(columns=["defense_info"], errors="ignore"), hide_index=True, width="stretch")


def main() -> None:
    """Draw the Overview page."""
    page = common.page_run_ui("Overview", "What the defense did to one training run: accuracy, the attack, and how "
                              "many examples (and poisons) it dropped at each gradient snapshot.", snapshots=False)
    if page is None:
        return
    run = page.run
    status_ui(page)
    try:
        metrics = common.load_metrics(page.path, page.stamp)
        examples = common.load_examples(page.path)
    except DamagedFile as err:
        common.damage_ui(err, "The figures need it; only the configuration is shown.", fatal=True)
        config_ui(run)
        return
    if metrics.empty:
        st.info("No epoch has finished yet; this page fills in as the run trains.")
        config_ui(run)
        return
    detection = detection_by_snapshot(page.path, page.stamp) if examples["is_poison"].any() else pd.DataFrame()
    headline_ui(run, metrics, examples, detection)
    figures_ui(run, metrics, examples, detection)
    configuration_ui(run, metrics)


main()
