#!/usr/bin/env bash
# The three-settings grids of docs/results.md (digits and the CIFAR-10 subset): pretrain, pick
# targets, craft one poison set per target and scenario, then `poisonlens evaluate` scenario by
# scenario (transfer, finetune, scratch; each resumable), then the combined tables. Runs go to
# $OUT (not in git); the tables are copied to $RESULTS (bench/results/eval-scenarios-digits by
# default). The exact calls that made each result are in that folder's README.md.
set -euo pipefail
export OMP_NUM_THREADS=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE="$ROOT/bench/results/eval-scenarios-digits"
DATASET=${DATASET:-digits}  # any --dataset spec; e.g. imagefolder:../shared/data/cifar10-subset
RESULTS=${RESULTS:-$HERE}  # where the tables are copied
OUT=${OUT:-/work/evalruns/scenarios-digits}
PY="$ROOT/.venv/bin/python"
PL="$ROOT/.venv/bin/poisonlens"
N_SETS=${N_SETS:-3}
SCHED="--epochs 12 --snapshot-every 2 --drop-after 2 --stop-after 10 --width 32"
DEFENSES=${DEFENSES:-clean,none,epic-0.2,random-0.2,deepknn,spectral,activation-clustering,loss}
cd "$ROOT"
mkdir -p "$OUT/poisons"/{scratch,transfer,finetune}
t0=$(date +%s)
# the pretrained model: 30 epochs on the pretraining split (fixed, whatever the victim's SCHED)
$PL evaluate --dataset "$DATASET" --pretrain-only --pretrain-epochs 30 --epochs 20 --out "$OUT"
KEY=$(echo "$DATASET" | sed -E 's/[^A-Za-z0-9]+/-/g; s/^-+//; s/-+$//' | tail -c 61)  # poisonlens.evaluate.dataset_key
MODEL="$OUT/pretrained/$KEY/seed0/checkpoints/model.pt"
[ -f "$OUT/pairs.txt" ] || $PL targets --dataset "$DATASET" --surrogate "$MODEL" --n "$N_SETS" --rule low-margin > "$OUT/pairs.txt"
echo "pretrain + pick: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"
# craft SCENARIO: one poison set per picked pair (skips sets already crafted)
craft() {
  local scen=$1 i=0 target adv name dest t1 args
  while read -r target adv; do
    i=$((i + 1)); name=$(printf "set%02d" $i)
    dest="$OUT/poisons/$scen/$name"
    [ -f "$dest.npz" ] && continue
    t1=$(date +%s)
    case $scen in
      transfer) args=(--attack feature-collision --eps 32 --surrogate "$MODEL") ;;
      finetune) args=(--attack gradient-matching --eps 32 --surrogate "$MODEL" --param restarts=1) ;;
      scratch)  args=(--attack gradient-matching --eps 32 --param restarts=1 --param 'surrogate_epochs=[20]') ;;
    esac
    $PL craft --dataset "$DATASET" "${args[@]}" --target-index "$target" --adv-class "$adv" \
      --budget 0.05 --seed $i --out "$OUT/craft/$scen/$name" --overwrite --quiet < /dev/null
    cp "$OUT/craft/$scen/$name/poisons.npz" "$dest.npz.tmp" && mv "$dest.npz.tmp" "$dest.npz"
    echo "craft $scen $name target $target adv $adv: $(( $(date +%s) - t1 )) s" | tee -a "$OUT/times.txt"
  done < "$OUT/pairs.txt"
}
# evaluate SCENARIO (resumable)
evaluate() {
  local t1
  t1=$(date +%s)
  $PL evaluate --dataset "$DATASET" --poisons "$OUT/poisons" --scenarios "$1" --seeds 0,1,2 \
    --defenses $DEFENSES $SCHED --jobs "${JOBS:-2}" --quiet --out "$OUT" > "$OUT/summary-$1.md"
  echo "evaluate $1: $(( $(date +%s) - t1 )) s" | tee -a "$OUT/times.txt"
}
# Steps as arguments, e.g. `bench/scenario_grid.sh craft:transfer eval:transfer` (default: all, the new
# settings first; scratch, measured before at one seed, last).
STEPS=${*:-craft:transfer eval:transfer craft:finetune eval:finetune craft:scratch eval:scratch tables}
for step in $STEPS; do
  case $step in
    craft:*) craft "${step#craft:}" ;;
    eval:*) evaluate "${step#eval:}" ;;
    tables)
$PL evaluate --dataset "$DATASET" --poisons "$OUT/poisons" --scenarios ${SCENARIOS:-transfer,finetune,scratch} \
  --seeds 0,1,2 --defenses $DEFENSES $SCHED --finished-only --quiet --out "$OUT" > /dev/null
      mkdir -p "$RESULTS" && cp "$OUT"/{runs.csv,detection.csv,summary.csv,paired.csv,summary.md,pairs.txt,times.txt} "$RESULTS/" ;;
  esac
done
