#!/bin/bash
# one-off device check for the lm branch (not committed)
R=$PWD
export PYTHONPATH=$R/src NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1
python -c "import typer, rich, pydantic, safetensors, sklearn, yaml, numpy" || { echo MISSING DEPS; exit 3; }
M="python -m modelcycle"
mkdir -p /tmp/w && cd /tmp/w
S=$(date +%s)
t() { echo "[$(( $(date +%s) - S ))s] $*"; }
t datasets; $M datasets pydocs --out data/pydocs 2>&1 | tail -1
t tokenizer; $M lm tokenizer data/pydocs/corpus.txt --vocab 4000 --out runs/tok 2>&1 | tail -1
t pretrain; $M lm pretrain $R/configs/lm-pretrain.yaml --overwrite train.device=cpu > $OUT/pretrain.log 2>&1; tail -4 $OUT/pretrain.log
t sft; $M lm sft $R/configs/lm-sft.yaml model.init_from=runs/lm-pretrain --overwrite train.device=cpu > $OUT/sft.log 2>&1; tail -3 $OUT/sft.log
t lora; $M lm sft $R/configs/lm-sft.yaml model.init_from=runs/lm-pretrain lora.r=8 train.lr=0.003 run.name=lm-sft-lora --overwrite train.device=cpu > $OUT/lora.log 2>&1; tail -2 $OUT/lora.log
t evaluate; COLUMNS=200 $M evaluate runs/lm-sft > $OUT/evaluate.log 2>&1; tail -30 $OUT/evaluate.log
t gates; COLUMNS=200 $M lm gates runs/lm-pretrain runs/lm-sft > $OUT/gates.log 2>&1; echo "gates rc=$?"; cat $OUT/gates.log | grep -v Warn
COLUMNS=200 $M evaluate runs/lm-sft-lora --json > $OUT/lora-eval.json 2>/dev/null
$M lm merge runs/lm-sft-lora --out runs/merged 2>&1 | tail -1
for r in lm-pretrain lm-sft lm-sft-lora; do mkdir -p $OUT/$r; cp runs/$r/metrics.jsonl runs/$r/events.log runs/$r/model/modelcycle.json $OUT/$r/ 2>/dev/null; cp runs/$r/samples.jsonl runs/$r/report/* $OUT/$r/ 2>/dev/null; done
t bench; cd $R && timeout 200 python benchmarks/bench_lm_pretrain.py --quick --threads 4 > $OUT/bench.log 2>&1; tail -25 $OUT/bench.log
t gpu; cd /tmp/w && timeout 90 $M lm pretrain $R/configs/lm-pretrain.yaml run.name=gpu train.device=cuda train.precision=bf16 train.epochs=2 --overwrite > $OUT/gpu.log 2>&1; tail -3 $OUT/gpu.log
t done
