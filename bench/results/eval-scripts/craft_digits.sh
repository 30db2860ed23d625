#!/bin/bash
# Craft 10 digits gradient-matching sets, one per low-margin pair; wall time of each craft -> craft_times.csv
cd /work/main
export OMP_NUM_THREADS=1
D=/tmp/eval/digits
mkdir -p $D/sets
echo "set,target,adv,seconds,rc" > $D/craft_times.csv
i=0
for pair in 66:1 299:2 32:3 96:4 54:0 323:2 216:9 85:7 26:3 49:4; do
  i=$((i+1)); n=$(printf "set%02d" $i); t=${pair%:*}; a=${pair#*:}
  s=$(date +%s.%N)
  .venv/bin/poisonlens craft --dataset digits --attack gradient-matching --target-index $t --adv-class $a \
    --budget 0.05 --eps 32 --seed 0 --param restarts=4 --param ensemble=2 --param 'surrogate_epochs=[20,40]' \
    --quiet --out $D/sets/$n > $D/$n.log 2>&1
  rc=$?
  e=$(date +%s.%N)
  echo "$n,$t,$a,$(echo "$e - $s" | bc),$rc" >> $D/craft_times.csv
done
echo done
