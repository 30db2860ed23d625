"""New run: a form built from TrainConfig's fields that starts training in the background.

The form has one widget per command-line field of :class:`poisonlens.config.TrainConfig`, made from
the field's metadata (help, choices, range): a field added to the config appears here (under
"More options") without touching this page. :func:`poisonlens.launch.launch_training` checks the
config and starts the run; its progress is shown at the top of the page, and once the run
store exists the sidebar's run picker switches to it.
"""

from __future__ import annotations

import time
from dataclasses import Field
from pathlib import Path

import streamlit as st

from poisonlens.config import Range, TrainConfig, option_fields, parse_defense_params
from poisonlens.dashboard.common import (
    REPO,
    STATUS_ICONS,
    cached_run_list,
    md,
    new_runs_dir,
    page_header,
    run_picker_ui,
    runs_dirs,
)
from poisonlens.defense.epic_config import subset_size_field
from poisonlens.errors import InputError
from poisonlens.launch import (
    LaunchStatus,
    launch_status,
    launch_training,
    list_launches,
    resume_launch,
    stop_run,
)
from poisonlens.options import default_of, fill_names
from poisonlens.store import RUN_JSON, open_run

PAGE = {"title": "New run", "icon": ":material/play_arrow:", "order": 60}

OTHER = "other file…"
NONE = "none (clean run)"
STATE_ICONS = {**STATUS_ICONS, "starting": "…", "mapping": "…"}
# Where fields are placed; any CLI field not named here goes under "More options".
LAYOUT = {
    "Data": ("dataset", "poisons", "clean_control"),
    "Model": ("model", "width", "scenario", "pretrained"),
    "Defense": ("defense", "defense_params"),
    "Schedule": ("epochs", "snapshot_every", "drop_after", "stop_after", "lr", "seed"),
}
# The form's starting values where they differ from TrainConfig's: a short EPIC run on digits.
FORM_DEFAULTS = {"epochs": 12, "drop_after": 2, "defense": "epic"}
SUBSET = subset_size_field()  # the subset size widget reads EPIC's field: one range, one default
FORM_STATE = "nr_kept"  # the form's values, kept while other pages are shown
FORM_EXTRA_KEYS = {"nr_poison_choice", "nr_poison_path", "nr_subset", "nr_params", "nr_projection"}
# Widget labels that read better than the field's name (the rest: "batch_size" -> "Batch size").
LABELS = {"lr": "Learning rate", "amp": "Mixed precision", "snapshot_every": "Snapshot every (T)"}


@st.cache_data(ttl=10, show_spinner=False)
def poison_files() -> list[str]:
    """Poison sets lying around: poisons/**/*.npz and sample_data/**/*.npz."""
    found: list[str] = []
    for root in (Path("poisons"), REPO / "poisons", REPO / "sample_data"):
        if root.is_dir():
            found += [str(p) for p in sorted(root.rglob("*.npz"))[:50]]
    return sorted(set(found))


@st.cache_data(show_spinner=False)
def defenses() -> list[str]:
    """The registered defenses."""
    from poisonlens.defense import defense_names

    return defense_names()


def _label(f: Field) -> str:
    return LABELS.get(f.name, f.name.replace("_", " ").capitalize())


def _start(f: Field):
    return FORM_DEFAULTS[f.name] if f.name in FORM_DEFAULTS else default_of(f)


def _poisons_widget(box, helptext: str) -> tuple[str, str]:
    """A poison set: one of the files lying around, none, or a path typed in."""
    files = poison_files()
    choice = box.selectbox("Poison set", [NONE, *files, OTHER], key="nr_poison_choice", help=helptext)
    other = box.text_input("Poison set path (for “other file…”)", key="nr_poison_path")
    return choice, other


def _defense_params_widget(box, helptext: str) -> tuple[float, str]:
    """EPIC's subset size (its own field's range and default) and any other KEY=VALUE lines."""
    subset = box.number_input(  # EPIC's own field: its range (0, 1] and default (0.1)
        "Subset size (EPIC)",
        float(SUBSET.metadata["range"].low),
        float(SUBSET.metadata["range"].high),
        float(default_of(SUBSET)),
        step=0.05,
        key="nr_subset",
        help=f"EPIC's {SUBSET.metadata['help']}, "
        f"{SUBSET.metadata['range'].describe()[8:]}; ignored by other defenses",
    )
    text = box.text_area(
        "Other defense parameters, one KEY=VALUE a line",
        key="nr_params",
        height=68,
        placeholder="e.g. fraction=0.05 (random, loss) or cluster_thresh=1 (epic)",
        help=helptext,
    )
    return subset, text


def field_widget(f: Field, box) -> object:
    """One widget for config field ``f`` in container ``box``, made from its metadata.

    Returns the widget's raw value; :func:`config_values` turns the raw values into config
    values. Keys are ``nr_<field>``.

    Parameters
    ----------
    f : dataclasses.Field
        A TrainConfig field, with its help, choices and range metadata.
    box : streamlit container
        Where the widget goes (a column).
    """
    key, label, helptext, start = f"nr_{f.name}", _label(f), fill_names(f.metadata["help"]), _start(f)
    choices, rng = f.metadata.get("choices"), f.metadata.get("range") or Range()
    hint = str(f.type)
    if f.name == "poisons":
        return _poisons_widget(box, helptext)
    if f.name == "defense":
        names = defenses()
        index = names.index(start) if start in names else 0
        return box.selectbox(label, names, index=index, key=key, help=helptext)
    if f.name == "defense_params":
        return _defense_params_widget(box, helptext)
    if isinstance(start, bool):
        return box.checkbox(label, value=start, key=key, help=helptext)
    if choices:
        return box.selectbox(label, choices, index=choices.index(start), key=key, help=helptext)
    if hint.startswith("int"):
        return box.number_input(
            label, rng.low, rng.high, int(start), step=1, key=key, help=helptext
        )
    if hint.startswith("float | None"):  # None: the config's own default (said in the help)
        return box.number_input(
            f"{label} (0 = default)", 0.0, None, 0.0, format="%g", key=key, help=helptext
        )
    if hint.startswith("float"):
        return box.number_input(label, None, None, float(start), format="%g", key=key, help=helptext)
    if hint.startswith("tuple"):
        return box.text_input(
            label, ",".join(f"{v:g}" for v in start), key=key, help=helptext + " (comma-separated)"
        )
    return box.text_input(label, "" if start is None else str(start), key=key, help=helptext)


def config_values(raw: dict[str, object]) -> dict[str, object]:
    """The TrainConfig keyword arguments from the widgets' raw values (see :func:`field_widget`).

    Raises :class:`InputError` naming the field for a value that cannot be read.

    Parameters
    ----------
    raw : dict
        ``{field name: the widget's raw value}``, for every CLI field.
    """
    values: dict[str, object] = {}
    for f in option_fields():
        value, hint = raw[f.name], str(f.type)
        if f.name == "poisons":
            choice, other = value
            value = None if choice == NONE else (other.strip() if choice == OTHER else choice)
            if choice == OTHER and not value:
                raise InputError("poison set", "choose a file or type its path")
        elif f.name == "defense_params":
            subset, text = value
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            value = parse_defense_params(lines, subset if raw["defense"] == "epic" else None)
        elif hint.startswith("float | None"):
            value = float(value) or None
        elif hint.startswith("int"):
            value = int(value)
        elif hint.startswith("tuple"):
            try:
                value = tuple(float(v) for v in str(value).split(",") if v.strip())
            except ValueError:
                raise InputError(_label(f), f"expected comma-separated numbers, got {value!r}") from None
        elif hint.startswith("str") and isinstance(value, str):
            value = value.strip() or (None if "None" in hint else value)
        values[f.name] = value
    return values


def restore_form() -> None:
    """Put back the form's values kept by :func:`keep_form`.

    Streamlit forgets a widget's value when a page without it is drawn, so leaving New run for
    another page and coming back reset the form (the chosen poison set too).
    """
    kept = st.session_state.get(FORM_STATE, {})
    for key, value in kept.items():
        if key == "nr_poison_choice" and value not in [NONE, *poison_files(), OTHER]:
            continue  # the file went away: the selectbox starts over
        if key not in st.session_state:
            st.session_state[key] = value


def keep_form() -> None:
    """Copy the form's widget values (``nr_*``, not the run name: a name is used once) into a
    key no widget owns, which Streamlit keeps across pages."""
    widgets = {f"nr_{f.name}" for f in option_fields()} | FORM_EXTRA_KEYS
    st.session_state[FORM_STATE] = {k: st.session_state[k] for k in widgets if k in st.session_state}


def form_ui(runs_dir: Path) -> Path | None:
    """The form; returns the run directory it started, or None.

    Parameters
    ----------
    runs_dir : path
        The folder new runs are created in.
    """
    placed = {name for names in LAYOUT.values() for name in names}
    by_name = {f.name: f for f in option_fields()}
    more = [f for f in option_fields() if f.name not in placed]
    raw: dict[str, object] = {}
    with st.form("nr_form"):
        for section, names in LAYOUT.items():
            st.markdown(f"**{section}**")
            columns = st.columns(len(names) if len(names) > 2 else 2)
            for column, name in zip(columns, names, strict=False):
                raw[name] = field_widget(by_name[name], column)
        with st.expander("More options"):
            columns = st.columns(3)
            for i, f in enumerate(more):
                raw[f.name] = field_widget(f, columns[i % 3])
        c1, c2 = st.columns(2)
        name = c1.text_input("Run name (empty: <dataset>-<defense>-<time>)", key="nr_name")
        projection = c2.radio(
            "Gradient map after training",
            ["umap", "pca", "none"],
            horizontal=True,
            key="nr_projection",
            help="Computed once in the background after training, for the Gradient space page.",
        )
        submitted = st.form_submit_button("Start training", type="primary")
    keep_form()
    if not submitted:
        return None
    try:
        config = TrainConfig(**config_values(raw))
        with st.spinner("Checking the data set and the poison set…"):
            run_dir = launch_training(
            config,
            runs_dir=runs_dir,
                name=name.strip() or None,
                projection=None if projection == "none" else projection,
            )
    except InputError as err:
        st.error(f"Not started: {md(err)}")
        return None
    st.success(
        f"Started **{run_dir.name}** in the background; it keeps training if you close this page."
    )
    return run_dir


def retrain_ui(runs_dir: Path) -> Path | None:
    """Retrain a reviewed run without the examples marked poison; returns the run it started.

    Parameters
    ----------
    runs_dir : path
        The folder new runs are created in.
    """
    from poisonlens.dashboard.marking import review_or_empty
    from poisonlens.review import retrain_config, write_poison_list

    st.markdown("##### Retrain without the examples marked poison")
    infos = [i for i in cached_run_list(tuple(str(r) for r in runs_dirs())) if i["status"] != "unreadable"]
    reviewed = {str(i["path"]): i["name"] for i in infos
                if (review_or_empty(str(i["path"]))[0]["verdict"] == "poison").any()}
    if not reviewed:
        st.caption("No run has examples marked poison yet: mark them on the Suspects or Gradient space page, "
                   "then come back to train the same settings without them.")
        return None
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    chosen = c1.selectbox("Reviewed run", list(reviewed), format_func=reviewed.get, key="nr_retrain_run")
    review = review_or_empty(chosen)[0]
    n_poison = int((review["verdict"] == "poison").sum())
    go = c2.button(f"Retrain without its {n_poison} marked poison", key="nr_retrain", type="primary")
    st.caption("Same settings as that run (its run.json), and `--exclude` a list of the examples you marked "
               "poison, written next to the new runs. Compare then puts the two runs side by side.")
    if not go:
        return None
    source = open_run(chosen)
    name = f"{source.name}-without-{n_poison}-marked-{time.strftime('%H%M%S')}"
    listing = runs_dir / ".excludes" / f"{name}.csv"
    try:
        write_poison_list(review, listing)
        config = TrainConfig.from_json(retrain_config(source, listing))
        run_dir = launch_training(config, runs_dir=runs_dir, name=name, projection="umap")
    except (InputError, OSError) as err:
        st.error(f"Not started: {md(err)}")
        return None
    st.success(f"Started **{md(run_dir.name)}**: {md(source.name)}'s settings without the {n_poison} examples "
               f"marked poison ({md(listing)}).")
    st.page_link("views/compare.py", label=f"Compare {source.name} with {run_dir.name}",
                 icon=":material/compare_arrows:", query_params={"runs": f"{chosen},{run_dir}"})
    return run_dir


def _act(box, action, status: LaunchStatus, failed: str) -> bool:
    """``action(status.run_dir)``; on an InputError, one line ``failed: why`` in ``box``."""
    try:
        action(status.run_dir)
    except InputError as err:
        box.error(f"{failed}: {md(err)}")
        return False
    return True


def overview_link(box, status: LaunchStatus) -> None:
    """A link to the Overview page of a launched run that has a run store to show.

    Parameters
    ----------
    box : streamlit container
        Where the link goes (``st`` or a column).
    status : LaunchStatus
        The run's state; nothing is drawn before its run store exists or after it failed.
    """
    if status.state in ("finished", "mapping", "running", "interrupted"):
        box.page_link(
            "views/overview.py",
            label="Open in Overview",
            icon=":material/monitoring:",
            query_params={"run": status.name},
        )


def progress_ui(status: LaunchStatus) -> None:
    """A launched run's state, with a progress bar while it trains or computes its map.

    Parameters
    ----------
    status : LaunchStatus
        The launched run's state, read from its files.
    """
    icon = STATE_ICONS.get(status.state, "")
    st.markdown(f"{icon} **{md(status.name)}**: {status.state}")
    if status.state == "starting":
        st.progress(0.0, text="Loading the data set…")
    elif status.state == "running" and status.epochs:
        epoch = max(status.epoch or 0, 0)
        st.progress(
            min(1.0, epoch / status.epochs),
            text=f"epoch {epoch} of {status.epochs} ({status.phase or 'train'})",
        )
    elif status.state == "mapping":
        st.progress(
            status.map_fraction or 0.0,
            text=f"Training done; computing the gradient map: {status.map_message or 'starting'}",
        )
    if status.error:
        st.error(md(status.error))
    if not status.done and st.button(
        "Stop", key=f"nr_stop_{status.name}", icon=":material/stop:",
        help="Stop training (SIGTERM to the process it started); Resume below continues it "
        "from its last checkpoint.",
    ) and _act(st, stop_run, status, "Not stopped"):  # fmt: skip
        st.rerun()
    overview_link(st, status)


def live_ui(runs_dir: Path) -> None:
    """At the top of the page: the run started from this session and any run still going.

    Parameters
    ----------
    runs_dir : path
        The folder new runs are created in.
    """
    started = st.session_state.get("nr_started")
    shown = [s for s in list_launches(runs_dir) if not s.done or str(s.run_dir) == started]
    if not shown:
        return
    busy = any(not s.done for s in shown)

    @st.fragment(run_every=2 if busy else None)
    def live() -> None:
        states = {}
        for s in shown:
            status = launch_status(s.run_dir)
            states[str(status.run_dir)] = status.state
            with st.container(border=True):
                progress_ui(status)
        # a run moved on (its run store appeared, training ended): redraw the whole page, so
        # the sidebar's run picker lists the run and switches to it
        seen = st.session_state.get("nr_states", {})
        st.session_state["nr_states"] = {**seen, **states}
        if any(seen.get(run, state) != state for run, state in states.items()):
            st.rerun()

    live()


def history_ui(runs_dir: Path) -> None:
    """Every run started from this page, newest first (20 at most).

    Parameters
    ----------
    runs_dir : path
        The folder new runs are created in.
    """
    launches = list_launches(runs_dir)
    if not launches:
        st.caption(f"No run has been started from this page in `{runs_dir}` yet.")
        return
    for s in launches[:20]:
        with st.container(border=True):
            c1, c2 = st.columns([3, 1])
            c1.markdown(
                f"{STATE_ICONS.get(s.state, '')} **{md(s.name)}**: {s.state}"
                + (f" · epoch {s.epoch} of {s.epochs}" if s.epoch is not None else "")
            )
            if s.error:
                c1.error(md(s.error))
            if s.state == "interrupted" and c2.button(
                "Resume", key=f"nr_resume_{s.name}", icon=":material/play_arrow:",
                help="Continue from the last checkpoint (poisonlens train --resume).",
            ) and _act(c1, resume_launch, s, "Not resumed"):  # fmt: skip
                st.session_state["nr_started"] = str(s.run_dir)
                st.rerun()
            overview_link(c2, s)
            with c1.expander("command and log"):
                st.code(s.command or "", language="bash")
                st.code(s.log_tail or "(empty log)", language="text")


def follow_started_run() -> None:
    """Point the sidebar's run picker at the run started here, once its run store exists."""
    started = st.session_state.get("nr_started")
    if started and st.session_state.get("nr_followed") != started:
        if (Path(started) / RUN_JSON).is_file():
            cached_run_list.clear()
            st.query_params["run"] = Path(started).name
            st.session_state["nr_followed"] = started


def main() -> None:
    """Draw the New run page."""
    page_header(
        "New run",
        "Train a model under a defense in the background. Parameters are checked before "
        "anything starts; progress is read from the run store, so it survives reloading or "
        "closing this page.",
    )
    restore_form()
    follow_started_run()
    run_picker_ui()  # the sidebar's run picker, as on every page
    runs_dir = new_runs_dir()
    live = st.container()  # filled after the form, drawn above it
    st.caption(
        f"New runs go to `{runs_dir}` (set POISONLENS_RUNS or `-- --runs-dir DIR` to change)."
    )
    run_dir = form_ui(runs_dir)
    if run_dir is not None:
        st.session_state["nr_started"] = str(run_dir)
    run_dir = retrain_ui(runs_dir)
    if run_dir is not None:
        st.session_state["nr_started"] = str(run_dir)
    with live:
        live_ui(runs_dir)
    st.markdown("##### Runs started from here")
    history_ui(runs_dir)


main()
