#!/bin/bash
# After the EPIC worker $1 ends: the other baselines on 5 CIFAR sets, one set at a time (mkdir claims)
cd /work/main
export OMP_NUM_THREADS=1
while kill -0 $1 2>/dev/null; do sleep 5; done
C=/tmp/eval/cifar
mkdir -p $C/claims2
EV=".venv/bin/poisonlens evaluate --dataset imagefolder:../shared/data/cifar10-subset --seeds 1 --epochs 15 --stop-after 15 --quiet --out /tmp/eval/cifar-eval"
for s in set01 set02 set07 set03 set04; do
  mkdir $C/claims2/$s 2>/dev/null || continue
  echo "$s start $(date)"
  $EV --poisons $C/sets/$s --defenses deepknn,spectral,activation-clustering,loss
  echo "$s done $(date)"
done
echo "worker2 done $(date)"
