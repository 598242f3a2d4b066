"""Padding waste of fixed-row micro-batches against token-budget ones (trainer.micro_batch_tokens), and a step's time.

    .venv/bin/python scripts/bench_padding.py [--rows 256] [--micro-batch-size 8] [--budgets 4096 8192 16384]
                                              [--step-rows 32] [--no-step]

Data: chat-like lengths, log-normal as response lengths in chat data are (a long right tail):
prompt ~ LogNormal(ln 64, 0.8) tokens, response ~ LogNormal(ln 160, 1.0), each clipped to
[1, 1024], seeded. One step's shard of ``--rows`` rows in the rollout layout (prompt left-padded,
response right-padded, `rlhf.data.padding`), and the same lengths as right-padded SFT rows
(prompt + response).

Padding fraction = padded tokens / all tokens in the micro-batches (1 - real tokens / tokens
through the model), for:
- fixed rows, today: consecutive runs of micro_batch_size rows, every micro-batch as wide as the
  whole shard (that is what `split_batch` of a padded shard gives);
- fixed rows, trimmed: the same runs, each cut to the columns its rows need;
- token budget B: `rlhf.data.micro_batches.pack_by_tokens` (rows grouped by length, trimmed), for
  each B, with no row cap (micro_batch_size set to the shard), so the budget alone decides.

Step time (unless --no-step): forward + backward of a PPO-style token-mean loss over a
``--step-rows``-row shard (lengths / 4, so a step takes seconds on a CPU) with a Llama-shaped model
(hidden 256, 4 layers, ~3.3M parameters, fp32, random init), in plain torch (no DeepSpeed, no Ray:
the micro-batching alone), fixed rows against a token budget; the median of 3 timed steps after
one warm-up. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rlhf.algorithms.loss_agg import agg_count, aggregate
from rlhf.data.batch_layouts import cut_micro_batches, find_layout
from rlhf.data.batch_ops import split_batch
from rlhf.data.micro_batches import pack_by_tokens, padded_tokens
from rlhf.data.padding import build_sequence_batch
from rlhf.models.forward import response_logprobs

MODEL_SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=2048)
VOCAB = 512
MAX_LEN = 1024


def chat_lengths(rows: int, seed: int, scale: float = 1.0) -> list[list[int]]:
    """[prompt, response] token counts per row: log-normal, clipped to [1, MAX_LEN * scale]."""
    gen = torch.Generator().manual_seed(seed)
    cap = int(MAX_LEN * scale)

    def draw(median: float, sigma: float) -> list[int]:
        x = torch.exp(torch.randn(rows, generator=gen) * sigma) * median * scale
        return x.round().clamp(1, cap).long().tolist()

    return [list(pair) for pair in zip(draw(64, 0.8), draw(160, 1.0))]


def fraction(padded: int, real: int) -> float:
    return 1 - real / padded


def padding_report(lengths: list[list[int]], micro: int, budgets: list[int]) -> None:
    for name, rows_lengths in (("rollout (PPO/GRPO)", lengths), ("right-padded (SFT)", [[sum(r)] for r in lengths])):
        n = len(rows_lengths)
        real = sum(sum(r) for r in rows_lengths)
        whole_width = sum(max(r[p] for r in rows_lengths) for p in range(len(rows_lengths[0])))
        fixed = [list(range(s, min(s + micro, n))) for s in range(0, n, micro)]
        print(f"\n{name}: {n} rows, {real} real tokens, shard width {whole_width}")
        print(f"  {'scheme':<34} {'micro-batches':>13} {'largest (tokens)':>17} {'padding fraction':>17}")
        table = [
            (f"fixed {micro} rows, shard width (today)", len(fixed), micro * whole_width, n * whole_width),
            (f"fixed {micro} rows, trimmed", len(fixed), max(padded_tokens(g, rows_lengths) for g in fixed),
             sum(padded_tokens(g, rows_lengths) for g in fixed)),
        ]
        for budget in budgets:
            groups = pack_by_tokens(rows_lengths, budget, n)
            table.append((f"token budget {budget}", len(groups), max(padded_tokens(g, rows_lengths) for g in groups),
                          sum(padded_tokens(g, rows_lengths) for g in groups)))
        for scheme, count, largest, padded in table:
            print(f"  {scheme:<34} {count:>13} {largest:>17} {fraction(padded, real):>17.3f}")


def step_time(model, micro_batches: list[dict]) -> float:
    """Seconds for one forward + backward over the micro-batches (token-mean of -logp over the step)."""
    count = sum(float(agg_count(mb["response_mask"], "token_mean")) for mb in micro_batches)
    start = time.perf_counter()
    for mb in micro_batches:
        mask = mb["response_mask"]
        logp = response_logprobs(model, mb["input_ids"], mb["attention_mask"], mask.shape[1])
        aggregate(-logp, mask, "token_mean", count).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def timing_report(rows: int, micro: int, seed: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    lengths = chat_lengths(rows, seed + 1, scale=0.25)
    prompts = [torch.randint(3, VOCAB, (p,)).tolist() for p, _ in lengths]
    responses = [torch.randint(3, VOCAB, (r,)).tolist() for _, r in lengths]
    batch = build_sequence_batch(prompts, responses, pad_id=0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, pad_token_id=0, **MODEL_SHAPE)).train()
    layout, extents = find_layout(batch)
    budget = micro * int(extents.sum(1).float().mean())  # micro_batch_size rows of average length
    schemes = {
        f"fixed {micro} rows (today)": split_batch(batch, micro),
        f"token budget {budget}": cut_micro_batches(layout, batch, extents, pack_by_tokens(extents.tolist(), budget, rows)),
    }
    real = int(batch["attention_mask"].sum())
    print(f"\nstep time: {rows} rows (lengths / 4: {real} real tokens), Llama hidden 256 x 4 layers, fp32, "
          f"{torch.get_num_threads()} threads")
    for name, micro_batches in schemes.items():
        padded = sum(mb["input_ids"].numel() for mb in micro_batches)
        step_time(model, micro_batches)  # warm-up
        seconds = statistics.median(step_time(model, micro_batches) for _ in range(3))
        print(f"  {name:<30} {len(micro_batches):>3} micro-batches, padding fraction {fraction(padded, real):.3f}, "
              f"{seconds:.2f} s/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=256, help="rows in one step's shard")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--budgets", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--step-rows", type=int, default=32, help="rows of the timed step")
    parser.add_argument("--no-step", action="store_true", help="padding fractions only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("lengths: prompt ~ LogNormal(ln 64, 0.8), response ~ LogNormal(ln 160, 1.0), clipped to [1, 1024]")
    padding_report(chat_lengths(args.rows, args.seed), args.micro_batch_size, args.budgets)
    if not args.no_step:
        timing_report(args.step_rows, args.micro_batch_size, args.seed)


if __name__ == "__main__":
    main()
