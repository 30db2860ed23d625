#!/bin/bash
# Slot 1: wait for digits crafting, evaluate digits, then CIFAR sets 6-10 under EPIC
cd /work/main
export OMP_NUM_THREADS=1
while pgrep -f craft_digits.sh > /dev/null; do sleep 10; done
echo "digits eval start $(date)"
s=$(date +%s)
.venv/bin/poisonlens evaluate --dataset digits --poisons /tmp/eval/digits/sets \
  --defenses clean,none,epic-0.1,epic-0.2,epic-0.3,random-0.2,deepknn,spectral,activation-clustering,loss \
  --seeds 2 --epochs 30 --quiet --out /tmp/eval/digits-eval
echo "digits eval done $(date), $(( $(date +%s) - s )) s"
