#!/bin/bash
# Slot 2: wait for CIFAR crafting, then evaluate in priority order (cells disjoint from cifar_eval_B.sh)
cd /work/main
export OMP_NUM_THREADS=1
while pgrep -f craft_cifar.sh > /dev/null; do sleep 10; done
C=/tmp/eval/cifar
mkdir -p $C/all $C/A $C/B
for i in 01 02 03 04 05 06 07 08 09 10; do ln -sfn $C/sets/set$i $C/all/set$i; done
for i in 01 02 03 04 05; do ln -sfn $C/sets/set$i $C/A/set$i; done
for i in 06 07 08 09 10; do ln -sfn $C/sets/set$i $C/B/set$i; done
EV=".venv/bin/poisonlens evaluate --dataset imagefolder:../shared/data/cifar10-subset --seeds 1 --epochs 15 --stop-after 15 --quiet --out /tmp/eval/cifar-eval"
echo "start $(date)"
$EV --poisons $C/all --defenses none; echo "none done $(date)"
$EV --poisons $C/A/set01 --defenses clean; echo "clean done $(date)"
