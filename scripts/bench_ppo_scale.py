"""PPO on a model big enough to mean something: where every second of a step goes, against the bare components.

    .venv/bin/python scripts/bench_ppo_scale.py [--steps 2] [rlhf key=value ...]

Builds a Llama-shaped model (hidden 512, 6 layers, vocab 8192, untied: ~27.7M parameters; random
init, so responses rarely stop before max_new_tokens) as policy, reference, reward model and
critic, and 64 prompts of 128 tokens. Then, each in its own process on this machine:

1. rlhf PPO, five roles on local Ray (configs/tiny/ppo.yaml's layout: 64 prompts x 4 samples,
   128 new tokens, one PPO epoch of 4 minibatches of 64, micro-batches of 16); the last step is
   measured (the first carries one-off warm-up): time per phase and tokens/s per phase;
2. the same vLLM engine used directly (`vllm.LLM`, same settings and sampling) on the same prompts;
3. a plain PyTorch loop doing the same model work in one process on every core: the four
   scoring forwards (policy and reference logprobs, reward, values) and the policy and critic
   updates (forward, backward, AdamW step per minibatch) on batches of the same shape.

"Outside model compute" is the step's time minus the time in which some actor was executing the
step's model work (generate, logprobs, scores, values, ppo_step, value_step), read from Ray's task
timeline: waiting, serialisation, weight sync and driver work. The step's time against the bare
components' (standalone generation + plain scoring + plain training) is printed too: that gap also
holds our model work running slower than bare (e.g. four scoring processes side by side on one
thread each, against the plain loop's two threads per role in turn). A benchmark, not a test: it
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS, SAMPLES, PROMPT_TOKENS, RESPONSE_TOKENS = 64, 4, 128, 128
MINI_BATCH, MICRO_BATCH = 64, 16
SHAPE = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8,
             num_key_value_heads=8, max_position_embeddings=512, vocab_size=8192, tie_word_embeddings=False)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz      "


def build_inputs(root: Path, seed: int = 0) -> dict[str, Path]:
    """Policy, reward model and critic (one random backbone shape, three heads) and the prompts file."""
    import torch
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, LlamaConfig)

    from rlhf.tiny import build_tokenizer

    paths = {}
    for name, auto, extra in (("policy", AutoModelForCausalLM, {}),
                              ("reward", AutoModelForSequenceClassification, {"num_labels": 1}),
                              ("critic", AutoModelForTokenClassification, {"num_labels": 1})):
        tokenizer = build_tokenizer(root / name)
        torch.manual_seed(seed)
        config = LlamaConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **SHAPE, **extra)
        auto.from_config(config).save_pretrained(root / name)
        paths[name] = root / name
    rng = random.Random(seed)
    paths["prompts"] = root / "prompts.jsonl"
    with paths["prompts"].open("w") as f:
        for _ in range(PROMPTS):  # one character per token; BOS makes 128
            f.write(json.dumps({"prompt": "".join(rng.choice(_ALPHABET[:26]) for _ in range(PROMPT_TOKENS - 1))}) + "\n")
    return paths


def run_rlhf(paths: dict, steps: int, overrides: list[str]) -> dict:
    from rlhf.run import resolve_config, run

    out = tempfile.mkdtemp(prefix="bench_ppo_scale_")
    cfg = resolve_config(str(REPO / "configs" / "tiny" / "ppo.yaml"), [
        "tiny_assets=null", f"model.policy={paths['policy']}", f"model.reward={paths['reward']}", "model.reward_fn=null",
        f"model.critic={paths['critic']}", f"data.train={paths['prompts']}", "data.eval=null",
        "data.apply_chat_template=false", f"data.max_prompt_len={PROMPT_TOKENS}",
        f"rollout.max_new_tokens={RESPONSE_TOKENS}", f"algorithm.ppo.rollout_batch_size={PROMPTS}",
        f"algorithm.ppo.samples_per_prompt={SAMPLES}", f"algorithm.ppo.mini_batch_size={MINI_BATCH}",
        "algorithm.ppo.ppo_epochs=1", f"algorithm.ppo.num_steps={steps}", "algorithm.ppo.eval_interval=0",
        "algorithm.ppo.missing_eos_penalty=null", f"trainer.micro_batch_size={MICRO_BATCH}",
        # generation gets both cores' threads; the trainers train side by side on one each
        "resources.rollout.cpus_per_actor=1.2", "resources.policy.cpus_per_actor=0.2",
        "resources.critic.cpus_per_actor=0.2", "resources.reference.cpus_per_actor=0.2",
        "resources.reward.cpus_per_actor=0.2", "checkpoint.interval=0", "checkpoint.resume=never",
        # A process per scoring role: sharing one (the tiny config's start-up saving) puts the reference's and the
        # reward's passes in a row on one thread, 84 s of scoring instead of 71 s here (2026-11-30)
        "resources.share_scoring_process=false",
        f"logging.output_dir={out}", "logging.wandb.mode=disabled", "logging.progress_bar=false", *overrides,
    ])
    row = run(cfg)["history"][-1]
    import ray

    return {**row, **actor_compute(ray.timeline())}


COMPUTE_METHODS = ("generate", "logprobs", "scores", "values", "ppo_step", "value_step")  # the step's model work


def actor_compute(events: list[dict]) -> dict:
    """The last step's model work inside the actors, from Ray's task timeline: the seconds each actor method
    executed (``compute/<Class.method>``) and the seconds in which at least one of them ran (``compute/union_s``).

    A step starts by submitting generation, so the last step's work is every task from the last ``generate`` on.
    Only execution counts: fetching arguments, storing results and the weight sync's tasks stay outside.
    """
    tasks = [e for e in events if e["cat"].startswith("task::")]
    executes = [e for e in events if e["cat"] == "task:execute"]
    start = max(e["ts"] for e in tasks if e["cat"].endswith(".generate"))
    spans: list[tuple[float, float]] = []
    per_method: dict[str, float] = {}
    for task in tasks:
        name = task["cat"][len("task::"):]
        if task["ts"] < start or name.rsplit(".", 1)[-1] not in COMPUTE_METHODS:
            continue
        inside = [e for e in executes if e["tid"] == task["tid"] and task["ts"] <= e["ts"] <= task["ts"] + task["dur"]]
        for e in inside:
            spans.append((e["ts"], e["ts"] + e["dur"]))
            per_method[f"compute/{name}"] = per_method.get(f"compute/{name}", 0.0) + e["dur"] / 1e6
    union, reach = 0.0, float("-inf")
    for begin, end in sorted(spans):
        if end > reach:
            union += end - max(begin, reach)
            reach = end
    return {**per_method, "compute/union_s": union / 1e6}


def run_vllm(paths: dict) -> dict:
    import os

    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"  # as the rollout engine sets them (rollout.kv_cache_gib)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams

    from rlhf.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(paths["policy"]))
    prompts = [json.loads(line)["prompt"] for line in paths["prompts"].read_text().splitlines()]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    llm = LLM(model=str(paths["policy"]), dtype="float32", enforce_eager=True, seed=1, gpu_memory_utilization=0.05,
              enable_chunked_prefill=False, logprobs_mode="processed_logprobs")

    def params(seed: int):  # a seed per prompt, as the rollout engine samples
        return SamplingParams(n=SAMPLES, temperature=1.0, max_tokens=RESPONSE_TOKENS, logprobs=0,
                              stop_token_ids=[tokenizer.eos_token_id], seed=seed)

    llm.generate([{"prompt_token_ids": ids[0]}], params(0), use_tqdm=False)  # warm-up
    start = time.time()
    outputs = llm.generate([{"prompt_token_ids": p} for p in ids], [params(i) for i in range(len(ids))], use_tqdm=False)
    seconds = time.time() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"generate_s": seconds, "tokens": tokens}


def run_plain(paths: dict) -> dict:
    """The step's model work, bare: no Ray, no DeepSpeed, every core, one process."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

    torch.manual_seed(0)
    n, length = PROMPTS * SAMPLES, PROMPT_TOKENS + RESPONSE_TOKENS
    ids = torch.randint(0, SHAPE["vocab_size"], (n, length))
    mask = torch.ones_like(ids)
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"])
    reference = AutoModelForCausalLM.from_pretrained(paths["policy"]).eval()
    reward = AutoModelForSequenceClassification.from_pretrained(paths["reward"]).eval()
    critic = AutoModelForTokenClassification.from_pretrained(paths["critic"])

    def logprobs(model, mb):
        logits = model(input_ids=ids[mb], attention_mask=mask[mb]).logits[:, PROMPT_TOKENS - 1:-1].float()
        return torch.gather(F.log_softmax(logits, -1), -1, ids[mb, PROMPT_TOKENS:, None]).squeeze(-1)

    micro = [slice(i, i + MICRO_BATCH) for i in range(0, n, MICRO_BATCH)]
    for model in (policy, reference, reward, critic):  # warm-up: first-call allocations and kernel choices
        model(input_ids=ids[micro[0]], attention_mask=mask[micro[0]]).logits.float().mean().backward()
        model.zero_grad(set_to_none=True)
    times = {}
    start = time.time()
    with torch.no_grad():
        for name, fn in (("policy", lambda mb: logprobs(policy, mb)), ("reference", lambda mb: logprobs(reference, mb)),
                         ("reward", lambda mb: reward(input_ids=ids[mb], attention_mask=mask[mb]).logits),
                         ("critic", lambda mb: critic(input_ids=ids[mb], attention_mask=mask[mb]).logits)):
            t0 = time.time()
            for mb in micro:
                fn(mb)
            times[f"score_{name}_s"] = time.time() - t0
    times["score_s"] = time.time() - start
    advantages = torch.randn(n, RESPONSE_TOKENS)
    start = time.time()
    for model, loss_of in ((policy, lambda mb: -(logprobs(policy, mb) * advantages[mb]).mean()),
                           (critic, lambda mb: critic(input_ids=ids[mb], attention_mask=mask[mb]).logits.pow(2).mean())):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        for first in range(0, n, MINI_BATCH):
            for i in range(first, first + MINI_BATCH, MICRO_BATCH):
                (loss_of(slice(i, i + MICRO_BATCH)) * MICRO_BATCH / MINI_BATCH).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
    times["train_s"] = time.time() - start
    times["threads"] = torch.get_num_threads()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="a tiny shape and batch, to check the script runs")
    parser.add_argument("--child", choices=("rlhf", "vllm", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="rlhf config overrides (key=value)")
    args = parser.parse_args()
    if args.smoke:
        _smoke_sizes()
    if args.child:
        root = Path(args.root)
        paths = {name: root / name for name in ("policy", "reward", "critic")} | {"prompts": root / "prompts.jsonl"}
        result = {"rlhf": lambda: run_rlhf(paths, args.steps, args.overrides), "vllm": lambda: run_vllm(paths),
                  "plain": lambda: run_plain(paths)}[args.child]()
        (root / f"{args.child}.json").write_text(json.dumps(result))
        return

    root = Path(tempfile.mkdtemp(prefix="bench_ppo_scale_"))
    build_inputs(root)
    from transformers import AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(root / "policy").parameters())
    results = {}
    for name in ("rlhf", "vllm", "plain"):
        subprocess.run([sys.executable, __file__, "--child", name, "--root", str(root), "--steps", str(args.steps),
                        *(["--smoke"] if args.smoke else []), *args.overrides], check=True, cwd=REPO)
        results[name] = json.loads((root / f"{name}.json").read_text())
    report(results, params)


def _smoke_sizes() -> None:
    global PROMPTS, PROMPT_TOKENS, RESPONSE_TOKENS, MINI_BATCH, MICRO_BATCH
    PROMPTS, PROMPT_TOKENS, RESPONSE_TOKENS, MINI_BATCH, MICRO_BATCH = 8, 16, 16, 16, 8
    SHAPE.update(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


def report(results: dict, params: int) -> None:
    row, bare, plain = results["rlhf"], results["vllm"], results["plain"]
    n = PROMPTS * SAMPLES
    ours_tokens = row["response/length_mean"] * n
    step = row["time/step"]
    print(f"\nbench_ppo_scale: Llama-shaped, {params / 1e6:.1f}M parameters, fp32; {PROMPTS} prompts x {SAMPLES} samples, "
          f"{PROMPT_TOKENS} prompt + up to {RESPONSE_TOKENS} response tokens; step {row['step']} measured")
    print(f"{'phase':<10} {'rlhf s':>8} {'tokens/s':>9} {'bare s':>8} {'bare tokens/s':>13} {'rlhf/bare speed':>15}")
    gen_ours, gen_bare = ours_tokens / row["time/generate"], bare["tokens"] / bare["generate_s"]
    print(f"{'generate':<10} {row['time/generate']:>8.2f} {gen_ours:>9.0f} {bare['generate_s']:>8.2f} {gen_bare:>13.0f} "
          f"{gen_ours / gen_bare:>15.2f}")
    seq_tokens = n * (PROMPT_TOKENS + RESPONSE_TOKENS)
    for phase, ours, base in (("score", row["time/score"], plain["score_s"]), ("train", row["time/train"], plain["train_s"])):
        print(f"{phase:<10} {ours:>8.2f} {seq_tokens / ours:>9.0f} {base:>8.2f} {seq_tokens / base:>13.0f} {base / ours:>15.2f}")
    print(f"{'sync':<10} {row['sync/seconds']:>8.2f} {'':>9} {'-':>8}   ({row['sync/megabytes']:.0f} MB)")
    print("plain scoring per role: " + ", ".join(f"{k[6:-2]} {v:.2f}s" for k, v in plain.items() if k.startswith("score_") and k != "score_s")
          + f"  (torch threads {plain['threads']})")
    print("rlhf model work per actor method (Ray's task timeline, step measured): "
          + ", ".join(f"{k[8:]} {v:.2f}s" for k, v in sorted(row.items()) if k.startswith("compute/") and k != "compute/union_s"))
    inside = row["compute/union_s"]
    print(f"step {step:.2f}s; some actor computing for {inside:.2f}s; outside model compute (waiting, serialisation, "
          f"weight sync, driver work) {step - inside:.2f}s = {(step - inside) / step:.1%} of the step")
    compute = bare["generate_s"] + plain["score_s"] + plain["train_s"]
    print(f"against the bare components ({compute:.2f}s): {step - compute:.2f}s = {(step - compute) / step:.1%} of the step "
          "longer (the outside time plus our model work running slower than bare)")


if __name__ == "__main__":
    main()
