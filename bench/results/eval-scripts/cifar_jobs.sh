#!/bin/bash
# After worker $1 ends: take (set, defenses) jobs from jobs.txt in order; a job is claimed by mkdir, so two
# of these never run the same cell
cd /work/main
export OMP_NUM_THREADS=1
while kill -0 $1 2>/dev/null; do sleep 5; done
C=/tmp/eval/cifar
mkdir -p $C/jobclaims
EV=".venv/bin/poisonlens evaluate --dataset imagefolder:../shared/data/cifar10-subset --seeds 1 --epochs 15 --stop-after 15 --quiet --out /tmp/eval/cifar-eval"
n=0
while read s defs; do
  n=$((n+1))
  mkdir $C/jobclaims/job$n 2>/dev/null || continue
  echo "job$n $s $defs start $(date)"
  $EV --poisons $C/sets/$s --defenses $defs > /dev/null
  echo "job$n $s done $(date)"
done < $C/jobs.txt
echo "jobs done $(date)"
