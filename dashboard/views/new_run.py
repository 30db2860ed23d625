"""New run: a form that starts `poisonlens train` in the background, and the runs started from here."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.commands.train import parse_defense_params
from core.errors import InputError
from core.launch import launch_training, list_launches
from core.models import MODEL_NAMES
from core.train import SCENARIOS, TrainConfig
from dashboard.common import REPO, STATUS_ICONS, new_runs_dir, page_header, run_picker_ui

D = TrainConfig()
OTHER = "other file…"
NONE = "none (clean run)"
STATE_ICONS = {**STATUS_ICONS, "starting": "…", "mapping": "…"}


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
    from core.defense import defense_names

    return defense_names()


def form_ui(runs_dir: Path) -> None:
    names = defenses()
    with st.form("nr_form"):
        st.markdown("**Data**")
        c1, c2 = st.columns(2)
        dataset = c1.text_input("Data set", value="digits", key="nr_dataset",
                                help="digits (built in, 8×8), imagefolder:<dir>, cifar10:<dir> or npz:<file>")
        files = poison_files()
        poison_choice = c2.selectbox("Poison set", [NONE, *files, OTHER], key="nr_poison_choice",
                                     help="A poison set made by `poisonlens craft` (.npz) or a benchmark folder.")
        poison_other = c2.text_input("Poison set path (for “other file…”)", key="nr_poison_path")
        st.markdown("**Model**")
        c1, c2, c3, c4 = st.columns(4)
        model = c1.selectbox("Model", MODEL_NAMES, key="nr_model")
        width = c2.number_input("Width (small CNN)", 1, 256, D.width, key="nr_width")
        scenario = c3.selectbox("Scenario", SCENARIOS, key="nr_scenario",
                                help="scratch: train from random weights; transfer: frozen pretrained features, new "
                                     "last layer; finetune: all layers from a pretrained model")
        pretrained = c4.text_input("Pretrained model.pt", key="nr_pretrained",
                                   help="checkpoints/model.pt of an earlier run; needed for transfer and finetune")
        st.markdown("**Defense**")
        c1, c2, c3 = st.columns([1, 1, 2])
        defense = c1.selectbox("Defense", names, index=names.index("epic") if "epic" in names else 0, key="nr_defense")
        subset = c2.number_input("Subset size (EPIC)", 0.01, 1.0, 0.2, step=0.05, key="nr_subset",
                                 help="EPIC's share of examples chosen as medoids at each snapshot; ignored by other defenses")
        params_text = c3.text_area("Other defense parameters, one KEY=VALUE a line", key="nr_params", height=68,
                                   placeholder="e.g. fraction=0.05 (random, loss) or cluster_thresh=1 (epic)")
        st.markdown("**Schedule**")
        c1, c2, c3, c4, c5, c6 = st.columns(6)
        epochs = c1.number_input("Epochs", 1, 1000, 12, key="nr_epochs")
        every = c2.number_input("Snapshot every (T)", 1, 100, D.snapshot_every, key="nr_every")
        drop_after = c3.number_input("Drop after epoch", 0, 1000, 2, key="nr_drop_after")
        stop_after = c4.number_input("Stop dropping at", 0, 1000, D.stop_after, key="nr_stop_after")
        lr = c5.number_input("Learning rate (0 = default)", 0.0, 10.0, 0.0, format="%.4f", key="nr_lr")
        seed = c6.number_input("Seed", 0, 2**31 - 1, D.seed, key="nr_seed")
        c1, c2 = st.columns(2)
        name = c1.text_input("Run name (empty: <dataset>-<defense>-<time>)", key="nr_name")
        projection = c2.radio("Gradient map after training", ["umap", "pca", "none"], horizontal=True, key="nr_projection",
                              help="Computed once in the background after training, for the Gradient space page.")
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return
    try:
        poisons = None if poison_choice == NONE else (poison_other.strip() if poison_choice == OTHER else poison_choice)
        if poison_choice == OTHER and not poisons:
            raise InputError("poison set", "choose a file or type its path")
        params = parse_defense_params([p.strip() for p in params_text.splitlines() if p.strip()],
                                      subset if defense == "epic" else None)
        config = TrainConfig(dataset=dataset.strip(), poisons=poisons, model=model, width=int(width),
                             scenario=scenario, pretrained=pretrained.strip() or None, epochs=int(epochs),
                             lr=float(lr) or None, snapshot_every=int(every), defense=defense,
                             defense_params=params, drop_after=int(drop_after), stop_after=int(stop_after),
                             seed=int(seed))
        run_dir = launch_training(config, runs_dir=runs_dir, name=name.strip() or None,
                                  projection=None if projection == "none" else projection)
    except InputError as err:
        st.error(f"Not started: {err}")
        return
    st.success(f"Started **{run_dir.name}** in the background; it keeps training if you close this page.")


def launches_ui(runs_dir: Path) -> None:
    launches = list_launches(runs_dir)
    busy = any(not s.done for s in launches)

    @st.fragment(run_every=2 if busy else None)
    def table() -> None:
        current = list_launches(runs_dir)
        if not current:
            st.caption(f"No run has been started from this page in `{runs_dir}` yet.")
            return
        for s in current[:20]:
            with st.container(border=True):
                c1, c2 = st.columns([3, 1])
                c1.markdown(f"{STATE_ICONS.get(s.state, '')} **{s.name}**: {s.state}"
                            + (f" · epoch {s.epoch} of {s.epochs} ({s.phase})" if s.epoch is not None and not s.done else ""))
                if s.epochs and s.epoch is not None and not s.done:
                    c1.progress(min(1.0, s.epoch / max(s.epochs, 1)))
                if s.error:
                    c1.error(s.error)
                if s.state in ("finished", "mapping", "running", "interrupted"):
                    c2.page_link("views/overview.py", label="Open in Overview", icon=":material/monitoring:", query_params={"run": s.name})
                with c1.expander("command and log"):
                    st.code(s.command or "", language="bash")
                    st.code(s.log_tail or "(empty log)", language="text")
        if busy and all(s.done for s in current):
            st.rerun()

    table()


def main() -> None:
    page_header("New run", "Train a model under a defense in the background. Parameters are checked before anything "
                "starts; progress below is read from the run store, so it survives reloading or closing this page.")
    run_picker_ui()  # the sidebar's run picker, as on every page (the chosen run is kept for the other pages)
    runs_dir = new_runs_dir()
    st.caption(f"New runs go to `{runs_dir}` (set POISONLENS_RUNS or `-- --runs-dir DIR` to change).")
    form_ui(runs_dir)
    st.markdown("##### Runs started from here")
    launches_ui(runs_dir)


main()
