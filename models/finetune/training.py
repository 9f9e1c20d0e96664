"""Fine-tune the serving GGUF in PyTorch on the CPU: LoRA (default) or full fine-tuning, loss on the answer only.

The base is the very GGUF llama.cpp serves, loaded de-quantized by transformers (`gguf_file=`, needs the `gguf`
package); tokens come from llama.cpp's own tokenizer of that file (vocab only), each prompt segment tokenized apart
exactly as models/llm.py does, so training sees the token ids the server evaluates. The answer is the cluster
name's tokens plus the end-of-turn token, and only those positions carry loss (and only their hidden states go
through the 49152-wide output layer, the biggest single matmul of a 135M model).

Every prompt starts with the same static segment (system message, ~45 of ~80-170 tokens), so each step evaluates
it once, with gradients, and attends to its keys/values expanded over the batch (exact: same logits as a full
forward to 1e-7, checked in tests/unit/test_finetune.py).

LoRA vs full fine-tuning, measured on SmolLM2-135M on the shared 2-core machine (1 torch thread, batch 8,
MovieLens examples, the same 31 batches for both; `python -m bench.finetune_choices methods`):

    method  trainable  median step  31 steps   held-out answer loss (48 time-later prompts)
    LoRA    4.9M       8.3 s        253 s      1.895 -> 0.763   (rank 16, every projection, lr 1e-3)
    full    134.5M     12.1 s       431 s      1.895 -> 0.761   (lr 1e-4)

Per step both learn the same; a LoRA step costs ~0.7x a full one (no weight gradients, no AdamW state for the
135M weights, 28M of them the tied 49152x576 embedding), so within the same wall-clock budget LoRA takes ~1.5x
the steps, and it needs ~1 GB less memory. LoRA is therefore the default (`EXPLORER_FINETUNE_METHOD=lora`); its
update is merged into the weights before export, so serving cost does not change. `full` stays available (the
tiny end-to-end test uses it: a randomly initialised model has nothing for a low-rank update to adapt).

Seeded (torch, data order); the number of steps is planned (and re-planned every few steps) from the measured
step time to fit `EXPLORER_FINETUNE_BUDGET_S`, so a slower machine runs fewer steps rather than longer; the
exact step count therefore depends on the machine's speed.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.clusters import ClusterSet
from models.finetune.curation import Example
from models.prompts import PromptSegments
from streams.settings import Settings

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_LR = {"lora": 1e-3, "full": 1e-4}
CALIBRATION_STEPS = 4  # steps timed before the first plan of the step count (the first one is slow: allocations)
REPLAN_EVERY = 10  # steps between re-plans of the step count from the recent step time
WARMUP_SHARE, MIN_LR_SHARE = 0.06, 0.1
StepCallback = Callable[[int, int, float], None]  # (step, planned steps, loss)


# ---------------------------------------------------------------------------------------------------- tokens
class PromptTokenizer:
    """llama.cpp's tokenizer of a GGUF file (vocab only: no weights are loaded)."""

    def __init__(self, gguf_path: str | Path):
        import llama_cpp

        from models.llama_output import route_llama_output

        route_llama_output()  # llama.cpp's warning about the context of a vocab-only load goes to DEBUG
        self._llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
        vocab = self._llm._model.vocab
        self.eos = int(self._llm.token_eos())
        self.eog = sorted({t for t in range(self._llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
                          | {self.eos})

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._llm.detokenize(list(tokens), special=False).decode("utf-8", errors="replace")

    def prompt(self, segments: PromptSegments) -> tuple[list[int], list[int]]:
        """(static segment, trending + request): tokenized apart, as the server evaluates them."""
        return self.tokenize(segments.static), self.tokenize(segments.trending) + self.tokenize(segments.request)

    def answer(self, name: str) -> list[int]:
        return self.tokenize(name) + [self.eos]

    def close(self) -> None:
        self._llm.close()


@dataclass(frozen=True)
class Encoded:
    suffix: tuple[int, ...]  # trending + request + answer + end token (the static prefix is shared)
    answer_start: int  # index in `suffix` of the first answer token
    weight: float


def encode(examples: Sequence[Example], clusters: ClusterSet, tokenizer: PromptTokenizer
           ) -> tuple[list[int], list[Encoded]]:
    prefix: list[int] | None = None
    encoded = []
    for example in examples:
        static, rest = tokenizer.prompt(example.segments(clusters))
        if prefix is None:
            prefix = static
        elif static != prefix:
            raise ValueError("examples do not share the static prompt segment")
        answer = tokenizer.answer(clusters.clusters[example.target].name)
        encoded.append(Encoded(tuple(rest + answer), len(rest), example.weight))
    if prefix is None:
        raise ValueError("no examples to encode")
    return prefix, encoded


# ---------------------------------------------------------------------------------------------------- model
def load_base(gguf_path: str | Path) -> Any:
    """The GGUF's weights de-quantized into a float32 transformers model (LlamaForCausalLM for SmolLM2)."""
    import functools

    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = Path(gguf_path)
    verbosity, bar = hf_logging.get_verbosity(), gguf_utils.tqdm
    hf_logging.set_verbosity_error()  # deprecation notes and its own raw tqdm bar are noise beside our progress
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
        gguf_utils.tqdm = bar
    model.config.use_cache = False
    return model


def causal_parts(model: Any) -> tuple[Any, Any]:
    """(decoder stack, output layer) of a causal LM, through a peft wrapper if there is one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model, inner.lm_head


def answer_loss(model: Any, prefix: Sequence[int], batch: Sequence[Encoded], pad_id: int) -> Any:
    """Weighted mean over the batch of each example's mean cross-entropy on its answer tokens."""
    import torch
    from transformers import DynamicCache

    backbone, head = causal_parts(model)
    width = max(len(e.suffix) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for row, example in enumerate(batch):
        ids[row, : len(example.suffix)] = torch.tensor(example.suffix)
    hidden = _hidden_after_prefix(backbone, torch.tensor([list(prefix)]), ids, DynamicCache)
    # Right padding needs no attention mask: a real token never attends to positions after it.
    rows, positions, targets, weights = [], [], [], []
    for row, example in enumerate(batch):
        span = range(example.answer_start, len(example.suffix))
        for position in span:  # the hidden state before a token predicts it
            rows.append(row)
            positions.append(position - 1)
            targets.append(example.suffix[position])
            weights.append(example.weight / len(span))
    logits = head(hidden[torch.tensor(rows), torch.tensor(positions)])
    losses = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(targets), reduction="none")
    weight = torch.tensor(weights)
    return (losses * weight).sum() / weight.sum()


def _hidden_after_prefix(backbone: Any, prefix: Any, ids: Any, cache_type: Any) -> Any:
    """Hidden states of `ids` continuing the one shared `prefix`: the prefix is evaluated once and its keys and
    values are expanded (not copied) over the batch, so gradients from every row flow back into it."""
    import torch

    if ids.shape[1] == 0:
        raise ValueError("empty batch")
    start = prefix.shape[1]
    shared = backbone(input_ids=prefix, use_cache=True).past_key_values
    expanded = cache_type(config=backbone.config)
    for index, layer in enumerate(shared.layers):
        expanded.update(layer.keys.expand(ids.shape[0], -1, -1, -1), layer.values.expand(ids.shape[0], -1, -1, -1),
                        index)
    positions = (start + torch.arange(ids.shape[1]))[None].expand(ids.shape[0], -1)
    return backbone(input_ids=ids, past_key_values=expanded, position_ids=positions, use_cache=True
                    ).last_hidden_state


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    method: str
    learning_rate: float
    trainable_params: int
    steps: int
    planned_steps: int
    examples_seen: int
    epochs: float
    train_s: float
    stopped_by: str  # "plan" (epochs or budget plan reached) or "budget" (hard wall-clock stop)
    first_loss: float
    final_loss: float  # mean of the last 10 steps
    losses: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.pop("losses")
        return out


def train(model: Any, prefix: Sequence[int], encoded: Sequence[Encoded], settings: Settings, pad_id: int,
          on_step: StepCallback | None = None, budget_s: float | None = None) -> tuple[Any, TrainResult]:
    """Fine-tune `model` in place (LoRA or full, per settings) and return the plain model with any LoRA update
    merged into its weights, ready to export."""
    import torch

    if not encoded:
        raise ValueError("no training examples")
    torch.set_num_threads(settings.finetune_threads)
    torch.manual_seed(settings.finetune_seed)
    method = settings.finetune_method
    lr = settings.finetune_learning_rate or DEFAULT_LR[method]
    budget = settings.finetune_budget_s if budget_s is None else budget_s
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=settings.finetune_lora_rank, lora_alpha=settings.finetune_lora_alpha,
                                                 lora_dropout=0.0, target_modules=list(LORA_TARGETS)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()

    batch_size = settings.finetune_batch_size
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    epoch_limit = max(1, math.ceil(settings.finetune_max_epochs * steps_per_epoch))
    planned = epoch_limit
    batches = _batches(encoded, batch_size, random.Random(settings.finetune_seed))
    losses: list[float] = []
    durations: list[float] = []
    stopped_by = "plan"
    started = time.perf_counter()
    step = 0
    while step < planned:
        tick = time.perf_counter()
        if tick - started > budget and step > 0:
            stopped_by = "budget"
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * _schedule(step, planned)
        loss = answer_loss(model, prefix, next(batches), pad_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        durations.append(time.perf_counter() - tick)
        step += 1
        if step == CALIBRATION_STEPS or (step > CALIBRATION_STEPS and step % REPLAN_EVERY == 0):
            # (re)plan from the recent step time: a shared machine speeds up and slows down, and a plan fixed once
            # left a quarter of the budget unused in a MovieLens run; the cosine schedule follows the new length
            per_step = statistics.median(durations[1:][-REPLAN_EVERY * 2:])
            affordable = step + int(max(0.0, budget - (time.perf_counter() - started)) / per_step)
            planned = max(step, min(epoch_limit, affordable))
        if on_step is not None:
            on_step(step, planned, losses[-1])
    train_s = time.perf_counter() - started
    model.eval()
    if method == "lora":
        model = model.merge_and_unload()
    tail = losses[-10:]
    result = TrainResult(method=method, learning_rate=lr, trainable_params=sum(p.numel() for p in params),
                         steps=step, planned_steps=planned, examples_seen=step * batch_size,
                         epochs=round(step * batch_size / len(encoded), 3), train_s=round(train_s, 1),
                         stopped_by=stopped_by, first_loss=losses[0] if losses else float("nan"),
                         final_loss=sum(tail) / len(tail) if tail else float("nan"), losses=losses)
    return model, result


def _schedule(step: int, planned: int) -> float:
    """Linear warm-up, then cosine decay to MIN_LR_SHARE of the peak."""
    warmup = max(2, int(planned * WARMUP_SHARE))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, planned - warmup)
    return MIN_LR_SHARE + (1 - MIN_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _batches(encoded: Sequence[Encoded], batch_size: int, rng: random.Random):
    """Endless seeded epochs. Within windows of 16 batches, examples are sorted by length so a batch pads little,
    then the batches are shuffled."""
    window = batch_size * 16
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: len(encoded[i].suffix))
            batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
        rng.shuffle(batches)
        for batch in batches:
            yield [encoded[i] for i in batch]


# ---------------------------------------------------------------------------------------------------- inference
def torch_greedy(model: Any, prompt: Sequence[int], eog: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy answer tokens (without the end token) of the PyTorch model, for comparing with llama.cpp."""
    import torch

    stop = set(eog)
    out: list[int] = []
    with torch.no_grad():
        result = model(input_ids=torch.tensor([list(prompt)]), use_cache=True)
        for _ in range(max_new_tokens):
            token = int(torch.argmax(result.logits[0, -1]))
            if token in stop:
                break
            out.append(token)
            result = model(input_ids=torch.tensor([[token]]), past_key_values=result.past_key_values, use_cache=True)
    return out


def torch_divergence_gap(model: Any, prompt: Sequence[int], reference: Sequence[int], candidate: Sequence[int],
                         eog: Sequence[int]) -> float:
    """How far below its own best the PyTorch model ranks the token another model chose where the two greedy
    answers first differ, in nats (0.0 when the answers are the same).

    Both answers share every token before that position, so the PyTorch model is asked once, on the prompt and the
    shared tokens: its best token there is `reference`'s next one (or an end token, where `reference` ended), and the
    gap is log p(best) - log p(candidate's token) -- the best end token where `candidate` ended. A quantized model
    that flips a near-tie has a small gap; a broken export picks tokens the trained model finds unlikely."""
    import torch

    reference, candidate = list(reference), list(candidate)
    if reference == candidate:
        return 0.0
    shared = next((k for k, (a, b) in enumerate(zip(reference, candidate)) if a != b),
                  min(len(reference), len(candidate)))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(prompt) + reference[:shared]])).logits[0, -1]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    if shared < len(candidate):
        chosen = float(log_probs[candidate[shared]])
    else:  # the candidate stopped here: its best case is the likeliest end token
        chosen = float(log_probs[list(eog)].max())
    return max(0.0, float(log_probs.max()) - chosen)


def answer_gap(model: Any, prompt: Sequence[int], answer: Sequence[int], eog: Sequence[int],
               max_new_tokens: int) -> float | None:
    """Another model's greedy `answer` to `prompt` judged by the PyTorch model's own greedy answer: None when the
    two are the same tokens, else `torch_divergence_gap` (gates.ExportCheck gathers these)."""
    reference = torch_greedy(model, prompt, eog, max_new_tokens)
    if reference == list(answer):
        return None
    return torch_divergence_gap(model, prompt, reference, answer, eog)
