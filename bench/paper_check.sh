#!/usr/bin/env bash
# A cut of the whole-of-CIFAR-10 grid (docs/results.md, issue 20) for a CUDA machine, in about
# 10 minutes on one H100: a clean surrogate, targets drawn as the poisoning benchmark draws them,
# gradient matching (eps 16, 1 % poisons) against the surrogate, then `poisonlens evaluate` with
# clean, none, EPIC-0.2 (every epoch after a short warm-up) and its random twin. Prints the
# summary (attack success, accuracy, drops per defense) and EPIC against its twin cell by cell.
#
#   make paper-check                       # or: bench/paper_check.sh
#   TARGETS=4 EPOCHS=40 bench/paper_check.sh   # the full schedule (hours, not minutes)
#
# Environment (defaults in brackets): CIFAR [../shared/data/cifar10], MODEL [resnet18],
# WIDTH [64, smallcnn only], EPOCHS [8] victim epochs, SURROGATE_EPOCHS [8], TARGETS [2],
# SEEDS [0], DEFENSES [clean,none,epic-0.2,random-0.2], OUT [a new temporary folder],
# PL [.venv/bin/poisonlens], ALLOW_CPU [0: exit with a message where there is no CUDA;
# 1: run anyway, e.g. DATASET=digits MODEL=smallcnn EPOCHS=2 for a smoke test],
# DATASET [imagefolder:$CIFAR], CRAFT_PARAMS [none: the attack's paper defaults; e.g. 'restarts=1'
# for fewer random starts], JOBS [1] runs at once.
#
# Run it again with the same OUT and it carries on where it stopped: a finished surrogate, the
# drawn targets and every crafted set are kept, a killed surrogate resumes from its checkpoint,
# and `poisonlens evaluate` trains only the runs not yet finished (resuming killed ones). This is
# how the CPU grid of docs/results.md ran over several sessions.
#
# KEPT=<folder> carries a grid from one machine to the next without its run folders (hundreds of
# MB each): the small files that make it (the surrogate's run.json, metrics and model.pt, the
# targets, the poison sets, and evaluate's record of every finished cell, <run>.cell.json, with
# the clean controls' weights) are copied from KEPT into OUT where OUT lacks them before anything
# runs, and from OUT back into KEPT as each step ends (files KEPT already holds are left alone).
# The CPU grid's are in bench/results/eval-cifar-full/kept.
#
# SCHEDULE [every]: when EPIC selects. 'every': every epoch after a 2-epoch warm-up, to the end
# (the grid's T = 1), tables in $OUT/eval. 'authors': the EPIC authors' from-scratch command for
# eps 16 (their examples.sh: a selection every 5 epochs from epoch 1 on, none after the last lr
# step) and their script's selection pool (every example clustered, dropped ones too: EPIC's
# pool="all", docs/epic.md), tables in $OUT/eval-authors; EVERY [5] overrides its period. The undefended cells
# (clean, none) do not depend on the schedule: 'authors' takes their records from $OUT/eval where
# they have finished there, and trains them itself where not.
set -euo pipefail
cd "$(dirname "$0")/.."
PL=${PL:-.venv/bin/poisonlens}
[ -x "$PL" ] || PL=poisonlens
PY=$(dirname "$(command -v "$PL")")/python
[ -x "$PY" ] || PY=python3
CIFAR=${CIFAR:-../shared/data/cifar10}
DATASET=${DATASET:-imagefolder:$CIFAR}
MODEL=${MODEL:-resnet18}
WIDTH=${WIDTH:-64}
EPOCHS=${EPOCHS:-8}
SURROGATE_EPOCHS=${SURROGATE_EPOCHS:-8}
TARGETS=${TARGETS:-2}
SEEDS=${SEEDS:-0}
DEFENSES=${DEFENSES:-clean,none,epic-0.2,random-0.2}

if [ "${ALLOW_CPU:-0}" != 1 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "paper_check: no CUDA device on this machine; nothing run (ALLOW_CPU=1 runs it on the CPU)"
    exit 0
fi
if [[ $DATASET == imagefolder:* ]] && [ ! -d "${DATASET#imagefolder:}/train" ]; then
    echo "paper_check: ${DATASET#imagefolder:}: no train/ folder (set CIFAR=<ImageFolder with train/ and test/>)" >&2
    exit 2
fi
# the paper's schedule shape: SGD, lr decayed x0.1 at fixed fractions (TrainConfig's
# lr_milestones), crop-flip augmentation, EPIC every epoch (T = 1) after a 2-epoch warm-up
SCHED=(--epochs "$EPOCHS" --snapshot-every 1 --drop-after 2 --stop-after "$EPOCHS" --augment auto)
EVAL=eval
case "${SCHEDULE:-every}" in
    every) ;;
    authors)  # no selection after the last lr milestone (7/8 of the epochs, as TrainConfig's)
        SCHED=(--epochs "$EPOCHS" --snapshot-every "${EVERY:-5}" --drop-after 1
               --stop-after $(( EPOCHS * 7 / 8 + 1 )) --augment auto --defense-param 'pool="all"')
        EVAL=eval-authors ;;
    *) echo "paper_check: SCHEDULE must be 'every' or 'authors', got '$SCHEDULE'" >&2; exit 2 ;;
esac
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/paper_check.XXXXXX")}
mkdir -p "$OUT"
# copy_small FROM TO: the grid's small files (regular files only: find does not follow links),
# never over a file TO already has
copy_small() {
    [ -n "$1" ] && [ -n "$2" ] && [ -d "$1" ] || return 0
    (cd "$1" && find . -type f \( -path ./surrogate/run.json -o -path ./surrogate/metrics.parquet \
        -o -path ./surrogate/checkpoints/model.pt -o -path ./pairs.txt -o -path './poisons/*.npz' \
        -o -path './eval*/runs/*.cell.json' -o -path './eval*/runs/*.model.pt' \) -print) |
    while IFS= read -r f; do
        [ -e "$2/$f" ] && continue
        mkdir -p "$2/$(dirname "$f")"
        cp "$1/$f" "$2/$f.part" && mv "$2/$f.part" "$2/$f"
    done
}
KEPT=${KEPT:-}
[ -z "$KEPT" ] || { mkdir -p "$KEPT"; copy_small "$KEPT" "$OUT"; }
ARCH=(--model "$MODEL")
[ "$MODEL" = smallcnn ] && ARCH+=(--width "$WIDTH")
say() { echo "paper_check: $*"; }
t0=$(date +%s)
say "$MODEL, $DATASET, $TARGETS target(s) x seed(s) $SEEDS, $EPOCHS victim epochs (the paper: 200;" \
    "the full grid here: 30-40), surrogate $SURROGATE_EPOCHS epochs; runs in $OUT"

status() { "$PY" -c 'import sys; from poisonlens.store import open_run; print(open_run(sys.argv[1]).status)' "$1"; }
SURROGATE="$OUT/surrogate/checkpoints/model.pt"
if [ ! -f "$OUT/surrogate/run.json" ]; then
    "$PL" train --dataset "$DATASET" "${ARCH[@]}" --epochs "$SURROGATE_EPOCHS" --seed 1000 --quiet \
        --runs-dir "$OUT" --name surrogate
    say "surrogate trained: $(( $(date +%s) - t0 )) s"
elif [ "$(status "$OUT/surrogate")" != finished ]; then
    "$PL" train --resume "$OUT/surrogate" --quiet
    say "surrogate resumed and finished: $(( $(date +%s) - t0 )) s"
else
    say "surrogate: kept from an earlier call ($OUT/surrogate)"
fi

SURROGATE_ARCH=(--arch "$MODEL")
[ "$MODEL" = smallcnn ] && SURROGATE_ARCH+=(--width "$WIDTH")
if [ ! -s "$OUT/pairs.txt" ]; then
    "$PL" targets --dataset "$DATASET" --surrogate "$SURROGATE" "${SURROGATE_ARCH[@]}" --n "$TARGETS" \
        --rule benchmark --seed 0 > "$OUT/pairs.tmp"
    mv "$OUT/pairs.tmp" "$OUT/pairs.txt"
fi
say "targets (test index, adversarial class): $(tr '\n' ';' < "$OUT/pairs.txt")"
copy_small "$OUT" "$KEPT"

mkdir -p "$OUT/poisons"
i=0
while read -r target adv; do
    i=$((i + 1)); name=$(printf "set%02d" $i)
    [ -f "$OUT/poisons/$name.npz" ] && continue
    t1=$(date +%s)
    EXTRA=()
    for kv in ${CRAFT_PARAMS:-}; do EXTRA+=(--param "$kv"); done
    rm -rf "$OUT/craft/$name"
    "$PL" craft --dataset "$DATASET" --attack gradient-matching --target-index "$target" \
        --adv-class "$adv" --budget 0.01 --eps 16 --seed "$i" --surrogate "$SURROGATE" \
        --param model="\"$MODEL\"" --param width="$WIDTH" "${EXTRA[@]}" --quiet \
        --out "$OUT/craft/$name" < /dev/null
    cp "$OUT/craft/$name/poisons.npz" "$OUT/craft/$name.part"  # never a half-copied set in poisons/
    mv "$OUT/craft/$name.part" "$OUT/poisons/$name.npz"
    say "crafted $name (target $target -> class $adv): $(( $(date +%s) - t1 )) s"
    copy_small "$OUT" "$KEPT"
done < "$OUT/pairs.txt"

if [ "$EVAL" != eval ] && [ -d "$OUT/eval/runs" ]; then
    # the undefended cells' records (and the controls' weights), where finished under eval/
    (cd "$OUT/eval/runs" && find . -type f \( -name 'clean__seed*.cell.json' -o -name 'clean__seed*.model.pt' \
        -o -name '*__none__seed*.cell.json' \) -print) | while IFS= read -r f; do
        [ -e "$OUT/$EVAL/runs/$f" ] || [ -e "$OUT/$EVAL/runs/${f%.cell.json}" ] && continue
        mkdir -p "$OUT/$EVAL/runs/$(dirname "$f")"
        cp "$OUT/eval/runs/$f" "$OUT/$EVAL/runs/$f.part" && mv "$OUT/$EVAL/runs/$f.part" "$OUT/$EVAL/runs/$f"
    done
fi
t1=$(date +%s)
# the records of the cells finished so far, also when the grid is stopped
trap 'copy_small "$OUT" "$KEPT"' EXIT
trap 'exit 143' TERM INT
say "EPIC's schedule: ${SCHEDULE:-every} (${SCHED[*]})"
"$PL" evaluate --dataset "$DATASET" --poisons "$OUT/poisons" --defenses "$DEFENSES" \
    --seeds "$SEEDS" "${ARCH[@]}" "${SCHED[@]}" --jobs "${JOBS:-1}" --quiet --out "$OUT/$EVAL"
say "evaluate: $(( $(date +%s) - t1 )) s; all: $(( $(date +%s) - t0 )) s; tables in $OUT/$EVAL"
