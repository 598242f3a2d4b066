"""Evaluate a trained model on held-out data, in one process with plain transformers (no Ray):

    python -m rlhf.eval CHECKPOINT --data FILE [--task MODULE:FN] [--reward-model DIR]
                        [--reference DIR] [--score-attribute ATTR] [--json OUT]

CHECKPOINT is a Hugging Face model directory (a LoRA adapter directory is evaluated through its
merged/ model), a run's output directory (its policy/ or reward/) or a checkpoint directory
(its policy_hf/ or reward_hf/). FILE is any dataset `rlhf.data` reads.

A policy (causal LM) answers every distinct prompt of FILE greedily; then
- with --task: the rule fn(prompt, response) -> float gives task/mean_score, and the task
  module's ``is_correct(prompt, response)``, when it has one, gives task/accuracy (for
  rlhf.tasks.arithmetic: the exact-match rate);
- with --reward-model: that reward model scores the responses (reward_model/mean_score);
- when FILE holds preference pairs and --reference is given: the policy's implicit preference
  accuracy against that reference (DPO's rewards/accuracies: beta * (log pi - log pi_ref) higher
  for chosen than for rejected; preference/dpo_loss at --beta).
A reward model (sequence classification) scores the pairs of a preference FILE:
rm/pairwise_accuracy (chosen above rejected) and rm/loss (Bradley-Terry). With --score-attribute
ATTR it is evaluated as a regression model (algorithm.rm.objective: regression) on a scored FILE
(HelpSteer rows, the target being each response's ATTR): rm/mse and rm/pearson, as the training
run's eval/loss and eval/pearson. A model trained with normalize_targets scores in standard units
of its training targets, so its rm/mse is not in the file's units; rm/pearson is. With a policy and
--reward-model on a preference FILE, that reward model's pairwise accuracy is reported too.

Prints a table (and a few samples); --json OUT writes the metrics and every sample.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from rlhf.config import DataConfig, RLHFConfig
from rlhf.data.collate import collate_preference, collate_prompts, collate_scored, pairs_as_rows
from rlhf.data.datasets import load_preference_dataset, load_prompt_dataset, load_scored_dataset
from rlhf.data.errors import DataError
from rlhf.data.formats import FORMATS, detect_format
from rlhf.data.padding import build_sequence_batch
from rlhf.data.readers import read_rows
from rlhf.data.stop_tokens import stop_token_ids

_MODEL_SUBDIRS = ("policy", "policy_hf", "reward", "reward_hf")


# -- what is being evaluated ---------------------------------------------------------------------


def resolve_model_dir(path: str | Path) -> Path:
    """The Hugging Face model directory CHECKPOINT stands for (see the module doc)."""
    p = Path(path)
    if (p / "adapter_config.json").is_file() and (p / "merged" / "config.json").is_file():
        return p / "merged"
    if (p / "config.json").is_file():
        return p
    for sub in _MODEL_SUBDIRS:
        if (p / sub).is_dir():
            return resolve_model_dir(p / sub)
    raise FileNotFoundError(f"{path}: no model here (no config.json, adapter with merged/, or {'/, '.join(_MODEL_SUBDIRS)}/)")


def is_reward_model(model_dir: Path) -> bool:
    config = json.loads((model_dir / "config.json").read_text())
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def is_preference_file(path: str) -> bool:
    for _, row in read_rows(path):
        return FORMATS[detect_format(row)].preference is not None
    raise DataError(path, None, "it has no rows")


def import_task(spec: str) -> tuple[Callable[[str, str], float], Callable[[str, str], bool] | None]:
    """'module:fn' -> (score fn, the module's is_correct or None)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--task: expected 'module:function', got {spec!r}")
    module = importlib.import_module(module_name)
    return getattr(module, attr), getattr(module, "is_correct", None)


# -- passes ------------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def greedy_responses(model, tokenizer, prompts, max_new_tokens: int, batch_size: int, device,
                     eos_ids: list[int]) -> list[tuple[list[int], bool]]:
    """(response ids up to and including the first stop id, whether it stopped there) per prompt."""
    from rlhf.models.loading import plain_generation_config

    model.generation_config = plain_generation_config(model)  # greedy means greedy: no repetition penalty
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = collate_prompts(prompts[start : start + batch_size], tokenizer.pad_token_id)
        generated = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
        )[:, batch["input_ids"].shape[1] :].cpu()
        for row in generated.tolist():
            end = next((t for t, tok in enumerate(row) if tok in eos_ids), None)
            out.append((row[: end + 1], True) if end is not None else (row, False))
    return out


@torch.no_grad()
def pair_logprobs(model, pairs, pad_id: int, batch_size: int, device) -> torch.Tensor:
    """[N, 2]: (chosen, rejected) sequence logprobs of every pair under a causal LM."""
    from rlhf.models.forward import masked_sequence_logprobs

    out = []
    for start in range(0, len(pairs), batch_size):
        rows = pairs_as_rows(collate_preference(pairs[start : start + batch_size], pad_id))
        rows = {k: v.to(device) for k, v in rows.items()}
        logps = masked_sequence_logprobs(model, rows["input_ids"], rows["attention_mask"], rows["loss_mask"]).float().cpu()
        out.append(logps.view(2, -1).T)
    return torch.cat(out)


@torch.no_grad()
def batch_scores(model, batch: dict, device) -> torch.Tensor:
    """[B]: a reward model's score of every row of a collated batch, on the CPU in float32."""
    from rlhf.models.forward import sequence_scores

    with torch.no_grad():
        return sequence_scores(model, batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()


def pair_scores(model, pairs, pad_id: int, batch_size: int, device) -> torch.Tensor:
    """[N, 2]: a reward model's (chosen, rejected) scores of every pair."""
    return torch.cat([batch_scores(model, pairs_as_rows(collate_preference(pairs[start : start + batch_size], pad_id)), device)
                      .view(2, -1).T for start in range(0, len(pairs), batch_size)])


def reward_model_pair_metrics(rm_dir: Path, data: str, data_cfg: DataConfig, args, prefix: str) -> dict[str, float]:
    from rlhf.algorithms.reward import pairwise_accuracy, pairwise_loss
    from rlhf.models.loading import load_reward_model, load_tokenizer

    device = _device(args.device)
    tokenizer = load_tokenizer(str(rm_dir))
    pairs = load_preference_dataset(data, tokenizer, data_cfg)
    model = load_reward_model(str(rm_dir), "float32").to(device).eval()
    scores = pair_scores(model, pairs, tokenizer.pad_token_id, args.batch_size, device)
    chosen, rejected = scores[:, 0], scores[:, 1]
    return {
        f"{prefix}/pairs": float(len(pairs)),
        f"{prefix}/pairwise_accuracy": pairwise_accuracy(chosen, rejected).item(),
        f"{prefix}/loss": pairwise_loss(chosen, rejected).mean().item(),
        f"{prefix}/margin_mean": (chosen - rejected).mean().item(),
    }


def reward_model_regression_metrics(rm_dir: Path, data: str, data_cfg: DataConfig, args, prefix: str) -> dict[str, float]:
    """A regression reward model on scored rows: the MSE and Pearson correlation of its scores and the targets."""
    from rlhf.algorithms.reward import pearson, regression_loss
    from rlhf.models.loading import load_reward_model, load_tokenizer

    device = _device(args.device)
    tokenizer = load_tokenizer(str(rm_dir))
    examples = load_scored_dataset(data, tokenizer, data_cfg)
    model = load_reward_model(str(rm_dir), "float32").to(device).eval()
    batches = [collate_scored(examples[start : start + args.batch_size], tokenizer.pad_token_id)
               for start in range(0, len(examples), args.batch_size)]
    scores = torch.cat([batch_scores(model, batch, device) for batch in batches])
    targets = torch.cat([batch["targets"] for batch in batches])
    return {
        f"{prefix}/responses": float(len(examples)),
        f"{prefix}/mse": regression_loss(scores, targets).mean().item(),
        f"{prefix}/pearson": pearson(scores, targets),
        f"{prefix}/score_mean": scores.mean().item(),
        f"{prefix}/target_mean": targets.mean().item(),
    }


def evaluate_policy(model_dir: Path, args, data_cfg: DataConfig, preference: bool) -> tuple[dict, list[dict]]:
    from rlhf.models.loading import load_causal_lm, load_tokenizer

    device = _device(args.device)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), "float32").to(device).eval()
    model.config.use_cache = True  # generation

    prompts, seen = [], set()
    for example in load_prompt_dataset(args.data, tokenizer, data_cfg):
        key = tuple(example.prompt_ids)
        if key not in seen:
            seen.add(key)
            prompts.append(example)
    stops = stop_token_ids(tokenizer, model.name_or_path, data_cfg.apply_chat_template)  # the rollout engines' stop set
    generated = greedy_responses(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, device, stops)
    samples = [
        {"prompt": p.raw_prompt, "response": tokenizer.decode(ids, skip_special_tokens=True), "stopped": stopped}
        for p, (ids, stopped) in zip(prompts, generated)
    ]
    metrics: dict[str, float] = {
        "generation/prompts": float(len(samples)),
        "generation/length_mean": sum(len(ids) for ids, _ in generated) / len(generated),
        "generation/eos_fraction": sum(stopped for _, stopped in generated) / len(generated),
    }
    if args.task:
        score_fn, correct_fn = import_task(args.task)
        for s in samples:
            s["score"] = float(score_fn(s["prompt"], s["response"]))
            if correct_fn is not None:
                s["correct"] = bool(correct_fn(s["prompt"], s["response"]))
        metrics["task/mean_score"] = sum(s["score"] for s in samples) / len(samples)
        if correct_fn is not None:
            metrics["task/accuracy"] = sum(s["correct"] for s in samples) / len(samples)
    if args.reward_model:
        rm_dir = resolve_model_dir(args.reward_model)
        scores = _reward_worker_scores(model_dir, rm_dir, prompts, generated, args)
        for s, score in zip(samples, scores.tolist()):
            s["reward_model_score"] = score
        metrics["reward_model/mean_score"] = scores.mean().item()
        if preference:
            metrics.update(reward_model_pair_metrics(rm_dir, args.data, data_cfg, args, "reward_model"))
    if preference and args.reference:
        metrics.update(_implicit_preference(model, tokenizer, args, data_cfg))
    return metrics, samples


def _reward_worker_scores(policy_dir: Path, rm_dir: Path, prompts, generated, args) -> torch.Tensor:
    """The reward role's scores of (prompt, response) sequences: what PPO's reward would be."""
    from rlhf.workers.reward import RewardWorker

    cfg = RLHFConfig.model_validate({
        "model": {"policy": str(policy_dir), "reward": str(rm_dir), "dtype": "float32"},
        "data": {"train": args.data},
        "resources": {"device": "cpu" if _device(args.device).type == "cpu" else "cuda"},
        "trainer": {"micro_batch_size": 16},
    })
    worker = RewardWorker(cfg)
    batch = build_sequence_batch([p.prompt_ids for p in prompts], [ids for ids, _ in generated], worker.policy_tokenizer.pad_token_id)
    return worker.scores(batch)


def _implicit_preference(model, tokenizer, args, data_cfg: DataConfig) -> dict[str, float]:
    from rlhf.algorithms.dpo import dpo_loss
    from rlhf.algorithms.reward import pairwise_accuracy
    from rlhf.models.loading import load_causal_lm

    device = _device(args.device)
    pairs = load_preference_dataset(args.data, tokenizer, data_cfg)
    reference = load_causal_lm(str(resolve_model_dir(args.reference)), "float32").to(device).eval()
    policy_logps = pair_logprobs(model, pairs, tokenizer.pad_token_id, args.batch_size, device)
    ref_logps = pair_logprobs(reference, pairs, tokenizer.pad_token_id, args.batch_size, device)
    losses, chosen, rejected = dpo_loss(policy_logps[:, 0], policy_logps[:, 1], ref_logps[:, 0], ref_logps[:, 1], beta=args.beta)
    return {
        "preference/pairs": float(len(pairs)),
        "preference/accuracy": pairwise_accuracy(chosen, rejected).item(),
        "preference/margin_mean": (chosen - rejected).mean().item(),
        "preference/dpo_loss": losses.mean().item(),
    }


# -- command line ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rlhf.eval", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="model dir, run output dir or checkpoint dir")
    parser.add_argument("--data", required=True, help="held-out prompts (any format) or preference pairs")
    parser.add_argument("--task", help="rule 'module:function' scoring (prompt, response), e.g. rlhf.tasks.arithmetic:score")
    parser.add_argument("--reward-model", help="a reward model to score the responses with (and its pairwise accuracy on pairs)")
    parser.add_argument("--reference", help="reference policy for the implicit preference accuracy of a DPO policy")
    parser.add_argument("--score-attribute", help="evaluate a reward model as a regression model on scored rows (HelpSteer): "
                        "this attribute of each response is its target")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO beta for preference/dpo_loss (default 0.1)")
    parser.add_argument("--json", dest="json_out", help="write metrics and samples as JSON here")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-prompt-len", type=int, default=256)
    parser.add_argument("--max-response-len", type=int, default=256)
    parser.add_argument("--no-chat-template", action="store_true", help="plain prompts (data.apply_chat_template=false in training)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--show", type=int, default=5, help="samples to print (default 5)")
    return parser.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict:
    model_dir = resolve_model_dir(args.checkpoint)
    data_cfg = DataConfig(
        max_prompt_len=args.max_prompt_len, max_response_len=args.max_response_len, truncation="left",
        apply_chat_template=not args.no_chat_template, score_attribute=args.score_attribute,
    )
    if is_reward_model(model_dir):
        if args.score_attribute:
            kind, metrics = "reward model (regression)", reward_model_regression_metrics(model_dir, args.data, data_cfg, args, "rm")
        elif is_preference_file(args.data):
            kind, metrics = "reward model", reward_model_pair_metrics(model_dir, args.data, data_cfg, args, "rm")
        else:
            raise ValueError(f"{model_dir} is a reward model: evaluate it on a preference file (chosen/rejected pairs), "
                             "or as a regression model on scored rows with --score-attribute")
        samples = []
    elif args.score_attribute:
        raise ValueError(f"--score-attribute evaluates a reward model, and {model_dir} is a policy")
    else:
        kind = "policy"
        metrics, samples = evaluate_policy(model_dir, args, data_cfg, is_preference_file(args.data))
    return {"model": str(model_dir), "kind": kind, "data": str(args.data), "metrics": metrics, "samples": samples}


def format_report(result: dict, show: int) -> str:
    lines = [f"model  {result['model']} ({result['kind']})", f"data   {result['data']}", "", f"{'metric':<34} value"]
    lines += [f"{key:<34} {value:.4f}" if not float(value).is_integer() else f"{key:<34} {int(value)}"
              for key, value in result["metrics"].items()]
    if result["samples"] and show:
        lines += ["", "samples:"]
        for s in result["samples"][:show]:
            mark = "" if "correct" not in s else ("  ok" if s["correct"] else "  wrong")
            lines.append(f"  {s['prompt']!r} -> {s['response']!r}{mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = evaluate(args)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(result, args.show))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
