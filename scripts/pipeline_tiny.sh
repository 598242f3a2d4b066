#!/usr/bin/env bash
# The whole RLHF pipeline on the tiny assets, on the CPU (about 3 minutes on 2 cores):
#
#   SFT -> RM  -> PPO   (PPO's model.reward is the reward model just trained, no rule reward)
#   SFT -> DPO
#
# each stage starting from the previous stage's output directory, then `python -m rlhf.eval` on
# every stage's model and a table of what each achieved on the 20 held-out prompts / 40 held-out
# pairs. Stages resume (checkpoint.resume=auto): running the script again continues or just
# re-evaluates; --fresh starts over.
#
#   scripts/pipeline_tiny.sh [--fresh]      OUT=outputs/pipeline_tiny  PYTHON=.venv/bin/python  WANDB=disabled
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python
OUT=${OUT:-outputs/pipeline_tiny}
ASSETS=assets/tiny
DATA=$ASSETS/data
TASK=rlhf.tasks.arithmetic:score
if [[ "${1:-}" == "--fresh" ]]; then rm -rf "$OUT"; fi
mkdir -p "$OUT/eval"
COMMON=("logging.wandb.mode=${WANDB:-disabled}" "logging.progress_bar=false")
declare -A SECS

stage() {  # stage NAME CONFIG [overrides...]: python -m rlhf.run, output in $OUT/NAME
  local name=$1 config=$2
  shift 2
  echo "=================== $name: $config $*"
  local start=$SECONDS
  "$PY" -m rlhf.run "$config" "logging.output_dir=$OUT/$name" "${COMMON[@]}" "$@"
  SECS[$name]=$((SECONDS - start))
}

evaluate() {  # evaluate NAME MODEL [rlhf.eval args...]: JSON in $OUT/eval/NAME.json
  local name=$1 model=$2
  shift 2
  echo "=================== eval $name: $model $*"
  "$PY" -m rlhf.eval "$model" --json "$OUT/eval/$name.json" "$@"
}

"$PY" -m rlhf.tiny "$ASSETS" > /dev/null

# 1. SFT from the random-init tiny policy: 80 prompt/answer pairs, 80 epochs at lr 3e-3.
stage sft configs/tiny/sft.yaml
# 2. Reward model from the SFT policy's backbone, on the preference pairs.
stage rm configs/tiny/rm.yaml "model.policy=$OUT/sft/policy" trainer.num_epochs=10 trainer.weight_decay=0.1
# 3. PPO from the SFT policy against the reward model (critic initialised from it too). A learned
#    reward model can be exploited where the rule could not: with the rule reward's kl_coef 0.01 the
#    policy drifts to answers the RM overrates (even an empty one); kl_coef 0.2 keeps it near SFT.
stage ppo configs/tiny/ppo.yaml "model.policy=$OUT/sft/policy" "model.reward=$OUT/rm/reward" model.reward_fn=null \
  model.critic=null algorithm.ppo.kl_coef=0.2 trainer.learning_rate=2e-4 trainer.critic_learning_rate=1e-3
# 4. DPO from the SFT policy (also its reference): plain DPO, no NLL term, a gentler lr.
stage dpo configs/tiny/dpo.yaml "model.policy=$OUT/sft/policy" algorithm.dpo.nll_coef=0.0 \
  trainer.learning_rate=3e-4 trainer.num_epochs=3

start=$SECONDS
evaluate base "$ASSETS/policy" --data "$DATA/prompts_eval.jsonl" --task "$TASK" --reward-model "$OUT/rm"
evaluate sft "$OUT/sft" --data "$DATA/prompts_eval.jsonl" --task "$TASK" --reward-model "$OUT/rm"
evaluate rm "$OUT/rm" --data "$DATA/pref_eval.jsonl"
evaluate ppo "$OUT/ppo" --data "$DATA/prompts_eval.jsonl" --task "$TASK" --reward-model "$OUT/rm"
evaluate dpo "$OUT/dpo" --data "$DATA/pref_eval.jsonl" --task "$TASK" --reward-model "$OUT/rm" --reference "$OUT/sft/policy"
SECS[eval]=$((SECONDS - start))

"$PY" - "$OUT" "${SECS[sft]}" "${SECS[rm]}" "${SECS[ppo]}" "${SECS[dpo]}" "${SECS[eval]}" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
seconds = dict(zip(["sft", "rm", "ppo", "dpo", "eval"], sys.argv[2:]))
rows = [
    ("base", "random-init tiny policy", ["task/accuracy", "task/mean_score", "reward_model/mean_score"]),
    ("sft", "SFT", ["task/accuracy", "task/mean_score", "reward_model/mean_score"]),
    ("rm", "RM (from SFT)", ["rm/pairwise_accuracy", "rm/loss"]),
    ("ppo", "PPO (SFT + RM reward)", ["task/accuracy", "task/mean_score", "reward_model/mean_score"]),
    ("dpo", "DPO (from SFT)", ["preference/accuracy", "task/accuracy", "task/mean_score", "reward_model/mean_score"]),
]
names = {"task/accuracy": "exact match", "task/mean_score": "task score", "reward_model/mean_score": "RM score",
         "rm/pairwise_accuracy": "pair accuracy", "rm/loss": "BT loss", "preference/accuracy": "preference accuracy"}
print("\n" + "=" * 78)
print(f"tiny pipeline, held-out data ({out})")
print(f"{'stage':<24} {'train s':>7}  results")
for key, label, metrics in rows:
    m = json.loads((out / "eval" / f"{key}.json").read_text())["metrics"]
    shown = "  ".join(f"{names[k]} {m[k]:.3f}" for k in metrics if k in m)
    print(f"{label:<24} {seconds.get(key, '-'):>7}  {shown}")
print(f"(eval of all stages: {seconds['eval']} s; JSON in {out / 'eval'})")
print("=" * 78)
EOF
