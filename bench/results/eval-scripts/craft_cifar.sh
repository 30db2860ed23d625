#!/bin/bash
# Craft 10 CIFAR-subset gradient-matching sets against one clean surrogate run; wall time -> craft_times.csv
cd /work/main
export OMP_NUM_THREADS=1
C=/tmp/eval/cifar
mkdir -p $C/sets
echo "set,target,adv,rule,seconds,rc" > $C/craft_times.csv
i=0
for spec in $(cat $C/pairs.txt); do
  i=$((i+1)); n=$(printf "set%02d" $i); IFS=: read t a rule <<< "$spec"
  s=$(date +%s.%N)
  .venv/bin/poisonlens craft --dataset imagefolder:../shared/data/cifar10-subset --attack gradient-matching \
    --target-index $t --adv-class $a --budget 0.01 --eps 16 --seed 0 --param restarts=2 \
    --surrogate /tmp/eval/cifar-runs/surrogate/checkpoints/model.pt --quiet --out $C/sets/$n > $C/$n.log 2>&1
  rc=$?
  e=$(date +%s.%N)
  echo "$n,$t,$a,$rule,$(echo "$e - $s" | bc),$rc" >> $C/craft_times.csv
done
echo crafted $(date)
