"""The rollout engine: samples responses with their sampling logprobs, and takes weight syncs.

`RolloutEngine` is a plain class; the driver wraps it with ``ray.remote(...)`` and the engine's
resources. Backends: "vllm" (a `vllm.LLM` living in this process) and "hf" (transformers
``generate``, for debugging). Both return the batch layout of `rlhf.data.padding` and the
logprob of every sampled token under the distribution it was sampled from: softmax(logits /
temperature), the quantity `rlhf.models.forward.response_logprobs(..., temperature)` recomputes.
With top_p < 1 or top_k set, that distribution is also truncated and renormalised, so the
rollout logprobs then differ from the trainer's untruncated recomputation on purpose (they
are the behaviour policy's). With ``greedy=True`` they are the temperature-1 logprobs.

Weights carry a version: the engine starts at 0 (the initial weights), `load_weights` sets the
version of the handle it loaded, and `generate` refuses a batch that expects another version,
so an engine that missed a sync cannot silently keep sampling old weights.

vLLM runs with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core and (with one GPU, or on the
CPU) its worker live in this actor process. A weight sync then reaches the worker by a plain
function call (`LLM.collective_rpc`), the handle needs no serialisation, and the worker can
``ray.get`` the object-store payload itself (it is a Ray worker); with multiprocessing on, the
engine core is a child process that is neither (the handle's ObjectRef fails msgpack). Measured
in a Ray actor on 2 CPU cores, tiny policy: engine construction 4 s with it off vs 46 s on, and
64 prompts x 32 tokens 0.34 s vs about 1.2 s. With tensor_parallel_size > 1 the workers are Ray
actors (vLLM's Ray executor), so they too can fetch from the object store.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rlhf.algorithms.seeds import sampling_seeds
from rlhf.config import RLHFConfig
from rlhf.data.padding import build_sequence_batch
from rlhf.models.loading import plain_generation_config
from rlhf.data.stop_tokens import stop_token_ids
from rlhf.data.templates import use_chat_template
from rlhf.workers.threads import match_cpu_share
from rlhf.weight_sync import SyncHandle, WeightTransport, gpu_uuid, make_transport

# Dotted path vLLM imports in its worker (``worker_extension_cls``).
WORKER_EXTENSION = f"{__name__}.RolloutWorkerExtension"

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class StaleWeightsError(RuntimeError):
    """`generate` was asked for a weight version the engine does not hold."""


class RolloutWorkerExtension:
    """Methods mixed into vLLM's worker class; called through ``LLM.collective_rpc``.

    The worker owns the model, so it is the side that receives: it runs the transport's
    ``receive`` and hands the Hugging Face-named tensors to its ``reload_weights``, which maps
    them onto vLLM's fused layout and re-runs the backend's post-load processing (a plain
    ``model.load_weights`` after start-up fails on the CPU backend).
    """

    def rlhf_init_transport(self, name: str, engine_index: int, init_kwargs: dict[str, Any]) -> None:
        transport = _cached_transport(self.__dict__.setdefault("_rlhf_transports", {}), name, "auto")
        if init_kwargs:
            _join_sync_group(transport, engine_index, self.rank, init_kwargs)

    def rlhf_device_uuid(self) -> str | None:
        return gpu_uuid()

    def rlhf_load_weights(self, handle: SyncHandle) -> None:
        transport = _cached_transport(self.__dict__.setdefault("_rlhf_transports", {}), handle.transport, "auto")
        skip_computed_buffers(self.model_runner.get_model())
        # A streaming transport's receive is a generator: each bucket is received as the loader reaches it.
        self.reload_weights(weights_iterator=transport.receive(handle))
        refresh_tied_output_layer(self.model_runner.get_model())


def refresh_tied_output_layer(model: torch.nn.Module) -> None:
    """Make a tied model's output layer compute with the input embedding it was just reloaded into.

    With tie_word_embeddings the checkpoint (and every sync) holds only ``embed_tokens.weight``; vLLM's
    loader skips ``lm_head.weight``, so its layer-wise reload never re-runs the output layer's
    ``process_weights_after_loading``. On the CPU that step is where the GEMM is prepared (a oneDNN or
    packed copy of the weight), so the engine went on sampling with the start-up output embedding
    (rollout vs trainer logprobs ~1 apart). Re-tying the parameter and re-running that step makes
    it use the new weights; on GPUs the unquantized step does nothing.
    """
    config = getattr(model, "config", None)
    lm_head = getattr(model, "lm_head", None)
    embed_tokens = getattr(getattr(model, "model", None), "embed_tokens", None)
    if not getattr(config, "tie_word_embeddings", False) or lm_head is None or embed_tokens is None:
        return
    if lm_head is not embed_tokens:
        lm_head.weight = embed_tokens.weight
    lm_head.quant_method.process_weights_after_loading(lm_head)


def skip_computed_buffers(model: torch.nn.Module) -> None:
    """Tell vLLM's layer-wise reload that non-persistent buffers are not weights.

    `reload_weights` counts every parameter and buffer of a layer as something to load. A rotary
    embedding's `cos_sin_cache` is a non-persistent buffer computed at start-up that no checkpoint
    (and no sync) contains, so every reload logged "RotaryEmbedding: Failed to load weights" and
    fell back to the cache it kept. Names in vLLM's SKIP_LOAD_TENSORS are left out of that count
    (the buffer is still kept and restored). Buffers that alias a parameter stay counted.
    """
    from vllm.model_executor.model_loader.reload import meta

    param_ptrs = {p.data_ptr() for p in model.parameters()}
    for module in model.modules():
        for name in module._non_persistent_buffers_set:
            buffer = module._buffers.get(name)
            if buffer is not None and buffer.data_ptr() not in param_ptrs:
                meta.SKIP_LOAD_TENSORS.add(name)


def _cached_transport(cache: dict[str, WeightTransport], name: str, device: str) -> WeightTransport:
    """One transport per name and process: broadcast's keeps its group between syncs."""
    if name not in cache:
        cache[name] = make_transport(name, _resolve_device(device))
    return cache[name]


def _join_sync_group(transport: WeightTransport, engine_index: int, worker_rank: int, init_kwargs: dict[str, Any]) -> None:
    """One group rank per engine worker: rank_offset (this engine's first rank) + the worker's TP rank."""
    kwargs = dict(init_kwargs)
    rank = kwargs.pop("rank_offset") + worker_rank
    transport.init(rank=rank, role=f"rollout engine {engine_index} worker {worker_rank}", **kwargs)


class RolloutEngine:
    """One generation engine (one vLLM instance, or one transformers model)."""

    def __init__(self, cfg: RLHFConfig, model_path: str, engine_index: int = 0):
        from transformers import AutoTokenizer

        # Before vLLM starts: its CPU worker then forbids changing the count, and Ray's OMP_NUM_THREADS
        # (the integer part of num_cpus) would leave a 1.2-CPU engine generating on one thread.
        match_cpu_share()
        self.cfg = cfg
        self.engine_index = engine_index
        self._version = 0
        self._backend = cfg.rollout.backend
        self._device = _resolve_device(cfg.resources.device)
        self._seed = cfg.trainer.seed + engine_index
        self.tokenizer = use_chat_template(AutoTokenizer.from_pretrained(model_path), cfg.data.chat_template)
        # The stop set the training data ends its responses with (rlhf.data.stop_tokens).
        self.eos_ids = stop_token_ids(self.tokenizer, model_path, cfg.data.apply_chat_template)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]
        if self._backend == "vllm":
            self._llm = self._start_vllm(model_path)
        else:
            self._model = self._load_hf(model_path)
            self._transports: dict[str, WeightTransport] = {}

    # ----------------------------------------------------------------- public surface

    def ready(self) -> bool:
        return True

    def version(self) -> int:
        return self._version

    def sync_device_uuids(self) -> list[str | None]:
        """The physical GPU of each of this engine's workers (None on the CPU)."""
        if self._backend == "vllm":
            return list(self._llm.collective_rpc("rlhf_device_uuid"))
        return [gpu_uuid() if self._device == "cuda" else None]

    def init_weight_sync(self, transport: str, engine_index: int, **init_kwargs) -> None:
        """Create the transport (resolved by the driver) in every worker; with init_kwargs, join its group.

        Broadcast: master_address, master_port, world_size, timeout_s; every worker of the engine
        joins at once, as group rank 1 + engine_index * tensor_parallel_size + its TP rank.
        """
        self.engine_index = engine_index
        if init_kwargs:
            init_kwargs["rank_offset"] = 1 + engine_index * self.cfg.rollout.tensor_parallel_size
        if self._backend == "vllm":
            self._llm.collective_rpc("rlhf_init_transport", args=(transport, engine_index, init_kwargs))
        else:
            sync = _cached_transport(self._transports, transport, self._device)
            if init_kwargs:
                _join_sync_group(sync, engine_index, 0, init_kwargs)

    def load_weights(self, handle: SyncHandle) -> int:
        """Receive the weights of ``handle`` (a streaming transport: of its version) and load them; returns the new version."""
        if self._backend == "vllm":
            self._llm.collective_rpc("rlhf_load_weights", args=(handle,))
            # Cached prefixes hold keys/values computed with the old weights.
            self._llm.reset_prefix_cache()
        else:
            transport = _cached_transport(self._transports, handle.transport, self._device)
            self._load_hf_weights(transport.receive(handle), handle)
        self._version = handle.version
        return self._version

    def sleep(self) -> None:
        """vLLM sleep level 1: weights offloaded to host memory, KV cache freed (rollout.sleep_while_training)."""
        self._llm.sleep(level=1)

    def wake_up(self) -> None:
        """Weights back on the GPU and the KV cache reallocated; the next sync then overwrites the weights."""
        self._llm.wake_up()

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        expected_version: int,
        samples_per_prompt: int = 1,
        greedy: bool = False,
        seed: int | None = None,
        step: int = 0,
        round_index: int = 0,
    ) -> dict:
        """Sample ``samples_per_prompt`` responses per prompt, prompt-major (prompt 0's samples first).

        ``seed`` (trainer.seed), ``step`` and ``round_index`` (a dynamic-sampling round within the step):
        sample s of this call (prompt-major) is drawn with
        `rlhf.algorithms.seeds.sampling_seed(seed, step, engine_index, s, round_index)`, so the same call gives
        the same samples, and no two steps, engines or samples share a seed. vLLM then gets one
        request per sample (the repeated prompt hits its prefix cache); the transformers backend
        samples the whole batch from one generator seeded with sample 0's seed.
        Returns the `build_sequence_batch` tensors (input_ids, attention_mask [B, P+R],
        response_mask [B, R]) plus rollout_logprobs [B, R] (0 on padding), finished_with_eos [B]
        (the response ended on EOS or a stop string, not at max_new_tokens), prompt_index [B]
        
        """
        if expected_version != self._version:
            raise StaleWeightsError(
                f"rollout engine {self.engine_index} holds weight version {self._version}, "
                f"but the batch expects version {expected_version}: a weight sync is missing"
            )
        if not prompt_token_ids or any(len(p) == 0 for p in prompt_token_ids):
            raise ValueError("generate: every prompt needs at least one token")
        if samples_per_prompt < 1:
            raise ValueError(f"generate: samples_per_prompt must be >= 1, got {samples_per_prompt}")
        prompts = [p for p in prompt_token_ids for _ in range(samples_per_prompt)]
        # vLLM and transformers both refuse several greedy samples per prompt (they would be
        # identical), so greedy decoding gets each prompt repeated instead.
        # Seeded sampling gets one request per sample too, each with its own seed.
        seeds = None if seed is None or greedy else sampling_seeds(seed, step, self.engine_index, len(prompts), round_index)
        engine_prompts, n = (prompts, 1) if greedy or seeds else (prompt_token_ids, samples_per_prompt)
        if self._backend == "vllm":
            responses, logprobs, finished = self._generate_vllm(engine_prompts, n, greedy, seeds)
        else:
            if seeds:
                torch.manual_seed(seeds[0])
            responses, logprobs, finished = self._generate_hf(engine_prompts, n, greedy)
        batch = build_sequence_batch(prompts, responses, self.pad_id)
        width = batch["response_mask"].shape[1]
        rollout_logprobs = torch.zeros(len(responses), width, dtype=torch.float32)
        for i, lp in enumerate(logprobs):
            rollout_logprobs[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        batch["rollout_logprobs"] = rollout_logprobs
        batch["finished_with_eos"] = torch.tensor(finished, dtype=torch.bool)
        batch["prompt_index"] = torch.arange(len(prompt_token_ids)).repeat_interleave(samples_per_prompt)
        return batch

    # ----------------------------------------------------------------- vLLM backend

    def _start_vllm(self, model_path: str):
        r = self.cfg.rollout
        on_cpu = self._device == "cpu"
        if on_cpu and r.sleep_while_training:
            raise ValueError("rollout.sleep_while_training needs CUDA (vLLM's sleep mode); it is off on the CPU")
        if on_cpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(r.kv_cache_gib)
            # vLLM's sampler torch.compiles its logprob ranking with inductor even in eager mode; on the
            # CPU that C++ build cost ~7 s of the first generate per engine start (measured, tiny policy),
            # and the eager op is as fast at these sizes. The GPU keeps it.
            torch._dynamo.config.disable = True
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # see the module docstring
        from vllm import LLM

        return LLM(
            model=model_path,
            tokenizer=model_path,
            dtype=self.cfg.model.dtype,
            seed=self._seed,
            tensor_parallel_size=r.tensor_parallel_size,
            distributed_executor_backend="ray" if r.tensor_parallel_size > 1 else None,
            gpu_memory_utilization=r.gpu_memory_utilization,
            enforce_eager=r.enforce_eager or on_cpu,
            worker_extension_cls=WORKER_EXTENSION,
            enable_sleep_mode=r.sleep_while_training,
            # A prompt prefilled in chunks across scheduler steps has a sampled token discarded and its
            # per-request seeded generator rewound, which CPU generators cannot do (vLLM fails the step);
            # on the CPU each prompt is prefilled whole.
            enable_chunked_prefill=not on_cpu,
            # The sampled token's logprob after temperature (and top-k/top-p), i.e. under the
            # distribution it was drawn from; the default "raw_logprobs" ignores the temperature.
            logprobs_mode="processed_logprobs",
        )

    def _sampling_params(self, samples_per_prompt: int, greedy: bool, seed: int | None):
        from vllm import SamplingParams

        r = self.cfg.rollout
        return SamplingParams(
            n=samples_per_prompt,
            temperature=0.0 if greedy else r.temperature,
            top_p=1.0 if greedy else r.top_p,
            top_k=0 if greedy or r.top_k < 1 else r.top_k,  # vLLM: 0 disables top-k
            max_tokens=r.max_new_tokens,
            stop=list(r.stop) or None,
            stop_token_ids=self.eos_ids,
            logprobs=0,  # only the sampled token's
            seed=seed,
        )

    def _generate_vllm(self, prompt_token_ids, samples_per_prompt, greedy, seeds: list[int] | None):
        from vllm.inputs import TokensPrompt

        # A seed per request (one sample each when seeded) makes the samples reproducible, e.g. after a resume.
        params = [self._sampling_params(samples_per_prompt, greedy, None if seeds is None else seeds[i])
                  for i in range(len(prompt_token_ids))]
        outputs = self._llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_token_ids],
            params,
            use_tqdm=False,
        )
        responses, logprobs, finished = [], [], []
        for out in outputs:  # one per prompt, in prompt order
            for completion in sorted(out.outputs, key=lambda c: c.index):
                ids = list(completion.token_ids)
                responses.append(ids)
                logprobs.append([completion.logprobs[t][tok].logprob for t, tok in enumerate(ids)])
                finished.append(completion.finish_reason == "stop")
        return responses, logprobs, finished

    # ----------------------------------------------------------------- transformers backend

    def _load_hf(self, model_path: str):
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self._seed)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_TORCH_DTYPES[self.cfg.model.dtype])
        # rollout.* alone decides the sampling distribution (and so the logprobs the trainer recomputes).
        model.generation_config = plain_generation_config(model)
        return model.to(self._device).eval()

    @torch.no_grad()
    def _load_hf_weights(self, weights, handle: SyncHandle) -> None:
        # Every name of a tied parameter is accepted (lm_head.weight is model.embed_tokens.weight in a
        # tied model), and a tied parameter received under any one of its names counts as received.
        params = dict(self._model.named_parameters(remove_duplicate=False))
        received = set()
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"weight sync v{handle.version}: the rollout model has no parameter {name!r}")
            params[name].copy_(tensor)
            received.add(id(params[name]))
        missing = sorted(name for name, p in self._model.named_parameters() if id(p) not in received)
        if missing:
            raise KeyError(f"weight sync v{handle.version}: {len(missing)} parameters not sent, e.g. {missing[:3]}")

    @torch.no_grad()
    def _generate_hf(self, prompt_token_ids, samples_per_prompt, greedy):
        r = self.cfg.rollout
        batch = build_sequence_batch(prompt_token_ids, [[] for _ in prompt_token_ids], self.pad_id)
        sampling = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k if r.top_k > 0 else None,
        }
        out = self._model.generate(
            input_ids=batch["input_ids"].to(self._device),
            attention_mask=batch["attention_mask"].to(self._device),
            max_new_tokens=r.max_new_tokens,
            num_return_sequences=samples_per_prompt,  # repeats each prompt in place: prompt-major
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            stop_strings=list(r.stop) or None,
            tokenizer=self.tokenizer if r.stop else None,
            output_scores=True,  # the processed scores: after temperature / top-k / top-p
            return_dict_in_generate=True,
            **sampling,
        )
        prompt_width = batch["input_ids"].shape[1]
        generated = out.sequences[:, prompt_width:].cpu()
        # [B, T] logprob of each generated token under the processed distribution of its step.
        step_logprobs = torch.stack(
            [torch.log_softmax(s.float(), dim=-1).gather(-1, generated[:, t : t + 1].to(s.device)).squeeze(-1).cpu()
             for t, s in enumerate(out.scores)],
            dim=1,
        )
        responses, logprobs, finished = [], [], []
        for row, row_logprobs in zip(generated.tolist(), step_logprobs):
            length, stopped = self._response_length(row)
            responses.append(row[:length])
            logprobs.append(row_logprobs[:length].tolist())
            finished.append(stopped)
        return responses, logprobs, finished

    def _response_length(self, tokens: list[int]) -> tuple[int, bool]:
        """Where generate stopped this row: after the first EOS or stop string, else the full width.

        generate pads rows that finished early, and a pad can also be a sampled token, so the end
        is found from the stop conditions rather than from the padding.
        """
        stops = list(self.cfg.rollout.stop)
        for t, tok in enumerate(tokens):
            if tok in self.eos_ids:
                return t + 1, True
            if stops:
                text = self.tokenizer.decode(tokens[: t + 1], skip_special_tokens=True)
                if any(s in text for s in stops):
                    return t + 1, True
        return len(tokens), False


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
