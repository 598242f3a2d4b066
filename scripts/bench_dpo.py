"""DPO throughput side by side: rlhf (Ray + DeepSpeed actors) and TRL's DPOTrainer, same work.

    .venv/bin/pip install -e '.[bench]'        # TRL, only for this benchmark
    .venv/bin/python scripts/bench_dpo.py [--pairs 1024] [--steps 40] [--batch 8] [rlhf key=value ...]

One invocation builds a Llama-shaped model (hidden 256, 4 layers, head dim 64, ~3.3M parameters,
the tiny character tokenizer) and 1,024 preference pairs of ~192 tokens (64-token prompt,
128-token answers), then trains DPO (sigmoid, beta 0.1, fp32, batch 8, 40 steps, the same
learning rate) once with each system, each in a fresh child process, and prints for each:

- steady-state pairs/s and tokens/s: pairs trained between the end of step 5 and the last step,
  over that wall time (the first steps carry one-off warm-up);
- time to first step: from the child's start (imports included) to the end of the first step;
- wall time: from the child's start to the end of training;
- peak memory: the summed peak RSS of every process of that system (the Ray actors for rlhf).

The ratio line divides rlhf's figure by TRL's. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 5
LEARNING_RATE = 5e-5
BETA = 0.1
MODEL_SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=512)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz      "


def build_inputs(root: Path, pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """The model (random init, saved in Hugging Face format) and the pairs (jsonl); both deterministic."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from rlhf.tiny import build_tokenizer

    model_dir = root / "model"
    tokenizer = build_tokenizer(model_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **MODEL_SHAPE)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    rng = random.Random(seed)

    def text(n: int) -> str:
        return "".join(rng.choice(_ALPHABET) for _ in range(n)).strip() or "a"

    data = root / "pairs.jsonl"
    with data.open("w") as f:
        for _ in range(pairs):
            f.write(json.dumps({"prompt": text(64), "chosen": text(128), "rejected": text(128)}) + "\n")
    return model_dir, data


class PeakMemory:
    """Samples the summed RSS of this process and the given others every 50 ms; keeps the peak."""

    def __init__(self, include=lambda proc: False):
        import psutil

        self._psutil, self._include, self.peak = psutil, include, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = self._psutil.Process()
        while not self._stop.wait(0.05):
            total = me.memory_info().rss
            for proc in self._psutil.process_iter(["cmdline"]):
                try:
                    if proc.pid != me.pid and self._include(proc):
                        total += proc.memory_info().rss
                except self._psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_trl(model_dir: Path, data: Path, args) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    step_ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_, **__):
            step_ends.append(time.time())

    memory = PeakMemory()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"), per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=LEARNING_RATE, beta=BETA,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=10_000, save_strategy="no", report_to=[],
        use_cpu=True, bf16=False, fp16=False, seed=0, dataloader_num_workers=0, max_length=None,
        precompute_ref_log_probs=args.trl_precompute, disable_dropout=True, max_grad_norm=1.0,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        args=config, train_dataset=load_dataset("json", data_files=str(data), split="train"),
        processing_class=tokenizer, callbacks=[StepTimes()],
    )
    trainer.train()
    return {"step_ends": step_ends, "peak_bytes": memory.stop()}


def run_rlhf(model_dir: Path, data: Path, args) -> dict:
    from rlhf.drivers import metrics
    from rlhf.run import resolve_config, run

    step_ends: list[float] = []
    log = metrics.MetricsLogger.log

    def timed_log(self, step, row, *a, **k):  # the end of each optimizer step, as the driver logs it
        if step >= 1:
            step_ends.append(time.time())
        return log(self, step, row, *a, **k)

    metrics.MetricsLogger.log = timed_log
    memory = PeakMemory(include=lambda proc: any("ray::" in part for part in (proc.info["cmdline"] or [])))
    out = tempfile.mkdtemp(prefix="bench_rlhf_")
    cfg = resolve_config(str(REPO / "configs" / "tiny" / "dpo.yaml"), [
        "tiny_assets=null", f"model.policy={model_dir}", f"data.train={data}", "data.eval=null",
        "data.apply_chat_template=false", "data.max_prompt_len=128", "data.max_response_len=160",
        f"trainer.train_batch_size={args.batch}", f"trainer.micro_batch_size={args.batch}",
        f"trainer.max_steps={args.steps}", "trainer.num_epochs=1", f"trainer.learning_rate={LEARNING_RATE}",
        "trainer.lr_scheduler=constant", "trainer.warmup_steps=0", "trainer.weight_decay=0.0",
        f"algorithm.dpo.beta={BETA}", "algorithm.dpo.nll_coef=0.0", "checkpoint.interval=0",
        "checkpoint.resume=never", f"logging.output_dir={out}", "logging.wandb.mode=disabled",
        "logging.progress_bar=false", *args.overrides,
    ])
    run(cfg)
    return {"step_ends": step_ends, "peak_bytes": memory.stop()}


def child(args) -> None:
    model_dir, data = Path(args.model), Path(args.data)
    result = (run_trl if args.child == "trl" else run_rlhf)(model_dir, data, args)
    result["started"] = args.started
    Path(args.result).write_text(json.dumps(result))


def summarise(name: str, result: dict, args, tokens_per_pair: float) -> dict:
    ends = result["step_ends"]
    steady_pairs = (len(ends) - WARMUP_STEPS) * args.batch
    pairs_per_s = steady_pairs / (ends[-1] - ends[WARMUP_STEPS - 1])
    return {
        "system": name, "steps": len(ends), "pairs/s": pairs_per_s, "tokens/s": pairs_per_s * tokens_per_pair,
        "first step s": ends[0] - result["started"], "wall s": ends[-1] - result["started"],
        "peak GiB": result["peak_bytes"] / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--trl-precompute", action="store_true", help="TRL's precompute_ref_log_probs=True")
    parser.add_argument("--only", choices=("trl", "rlhf"), help="run one system")
    parser.add_argument("--child", choices=("trl", "rlhf"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="rlhf config overrides (key=value)")
    args = parser.parse_args()
    if args.child:
        return child(args)

    root = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    model_dir, data = build_inputs(root, args.pairs)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    tokens_per_pair = sum(len(r["prompt"]) * 2 + len(r["chosen"]) + len(r["rejected"]) for r in rows) / len(rows)
    table = []
    for name in ("trl", "rlhf") if args.only is None else (args.only,):
        result_file = root / f"{name}.json"
        cmd = [sys.executable, __file__, "--child", name, "--model", str(model_dir), "--data", str(data),
               "--result", str(result_file), "--started", repr(time.time()), "--pairs", str(args.pairs),
               "--steps", str(args.steps), "--batch", str(args.batch), *(["--trl-precompute"] if args.trl_precompute else []),
               *args.overrides]
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        table.append(summarise(name, json.loads(result_file.read_text()), args, tokens_per_pair))
    print(f"\nbench_dpo: {args.pairs} pairs of ~{tokens_per_pair:.0f} tokens (prompt counted twice), "
          f"batch {args.batch}, {args.steps} steps, fp32, {os.cpu_count()} CPUs")
    keys = ("pairs/s", "tokens/s", "first step s", "wall s", "peak GiB")
    print(f"  {'system':<8}" + "".join(f"{k:>14}" for k in keys))
    for row in table:
        print(f"  {row['system']:<8}" + "".join(f"{row[k]:>14.2f}" for k in keys))
    if len(table) == 2:
        print(f"  {'ratio':<8}" + "".join(f"{table[1][k] / table[0][k]:>14.2f}" for k in keys) + "   (rlhf / trl)")


if __name__ == "__main__":
    main()
