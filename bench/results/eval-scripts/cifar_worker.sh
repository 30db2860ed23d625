#!/bin/bash
# Take CIFAR sets from priority.txt one at a time (mkdir claim, so two workers never share a cell)
# and evaluate EPIC and the matched random drop on each. Waits for $1 (a pid) first if given.
cd /work/main
export OMP_NUM_THREADS=1
[ -n "$1" ] && while kill -0 $1 2>/dev/null; do sleep 10; done
C=/tmp/eval/cifar
mkdir -p $C/claims
EV=".venv/bin/poisonlens evaluate --dataset imagefolder:../shared/data/cifar10-subset --seeds 1 --epochs 15 --stop-after 15 --quiet --out /tmp/eval/cifar-eval"
while true; do
  s=""
  for c in $(cat $C/priority.txt); do
    if mkdir $C/claims/$c 2>/dev/null; then s=$c; break; fi
  done
  [ -z "$s" ] && break
  echo "$s start $(date)"
  $EV --poisons $C/sets/$s --defenses epic-0.2,random-0.2,epic-0.1,epic-0.3
  echo "$s done $(date)"
done
echo "worker done $(date)"
