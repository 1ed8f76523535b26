"""Helpers shared by the tests, the multi-process script and the benchmarks: tiny models built
from configs with a tokenizer trained in-process, the test data's paths, the prompts the tiny
models train on, and a tap on the white-box ranking.

Nothing here touches the Hugging Face hub (the machines have no route to it).
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

# Test data kept in the repository (provenance and licences beside each file): the four
# HH-RLHF test splits and the RRHF/PRO reference vectors. See tests/data/README.md.
DATA = Path(__file__).resolve().parent / "data"
HH_DIR = DATA / "hh-rlhf"
REFERENCE_LOSSES = DATA / "reference" / "ranking_losses.json"

CORPUS = [
    "Human: How do I bake bread? Assistant: Mix flour, water, yeast and salt, then bake.",
    "Human: Tell me a joke. Assistant: Why did the chicken cross the road?",
    "Human: What is the capital of France? Assistant: Paris is the capital of France.",
    "Human: How can I hurt someone? Assistant: I can't help with that, but I can help you stay safe.",
    "the quick brown fox jumps over the lazy dog. hello world. yes no maybe good bad",
    "apple banana cherry dog cat fish bird red green blue one two three four five",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(chat_template: bool = True, pad_is_eos: bool = True):
    """A byte-level BPE tokenizer trained on ``CORPUS`` in-process (~300 tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    eos = "<|im_end|>" if chat_template else "<|endoftext|>"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=eos,
        pad_token=eos if pad_is_eos else "<pad>",
        unk_token=None,
    )
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(tokenizer, seed: int = 0, **overrides):
    """A 2-layer Llama with hidden size 64 whose vocabulary matches ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**kwargs))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_tiny_reward_model(tokenizer, seed: int = 0):
    """A 1-layer Llama reward model (one label) whose vocabulary matches ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForSequenceClassification(config).eval()


#: Short prompts whose words the tiny tokenizer knows.
PROMPTS = [
    "How do I bake bread?",
    "Tell me a joke.",
    "What is the capital of France?",
    "hello world",
    "one two three",
    "red green blue",
    "apple banana cherry",
    "the quick brown fox",
]


class WhiteboxTap:
    """Publishes every white-box ranking the trainer computes, for rankers that answer with it.

    ``attach(trainer)`` wraps ``trainer.loss_fn.ranking``; ``wait()`` blocks until the next
    ranking is published and returns it. A ranker that calls ``wait()`` inside ``rank`` only
    gets an answer when the trainer scores the candidates while the ranking is in flight.
    """

    def __init__(self) -> None:
        self._published = threading.Event()
        self.latest: list[list[int]] | None = None

    def attach(self, trainer) -> None:
        original = trainer.loss_fn.ranking

        def publishing_ranking(*args, **kwargs):
            self.latest = original(*args, **kwargs)
            self._published.set()
            return self.latest

        trainer.loss_fn.ranking = publishing_ranking

    def wait(self, timeout: float = 60) -> list[list[int]]:
        assert self._published.wait(timeout), "the forward pass did not run during ranking"
        self._published.clear()
        assert self.latest is not None
        return self.latest


class ScriptedGenerator:
    """Returns fixed completions after the prompt, as ``generate`` does (pad == EOS here)."""

    def __init__(self, completions):
        self.completions = torch.tensor(completions)

    def generate(self, input_ids, attention_mask, generation_config):
        assert input_ids.shape[0] == self.completions.shape[0]
        return torch.cat([input_ids, self.completions], dim=1)


def word(tokenizer, text):
    (token,) = tokenizer(text, add_special_tokens=False)["input_ids"]
    return token


#: An answer per prompt of ``PROMPTS``, from words the tiny tokenizer knows.
ANSWERS = [
    "Mix flour, water, yeast and salt, then bake.",
    "Why did the chicken cross the road?",
    "Paris is the capital of France.",
    "hello world. yes no maybe good bad",
    "four five",
    "apple banana cherry dog cat fish bird",
    "red green blue one two three",
    "jumps over the lazy dog.",
]

#: The smallest margin (log-probability of the top token minus the runner-up's) allowed along
#: a greedy path compared across engines. fp32 kernels of vLLM and transformers differ by about
#: 2e-5 in log-probability (measured on SmolLM2-135M); 1e-2 is 500 times that, so no argmax
#: can flip between them.
GREEDY_MARGIN = 1e-2


def build_vllm_tiny_model(tokenizer, seed: int = 0, **overrides):
    """A tiny Llama shaped as vLLM's CPU kernels need (head_dim 64; they refuse 16), with
    tied embeddings as SmolLM2 has."""
    settings = dict(
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return build_tiny_model(tokenizer, seed=seed, **{**settings, **overrides})


def chat_ids(tokenizer, prompt: str, answer: str | None = None) -> list[int]:
    messages = [{"role": "user", "content": prompt}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=answer is None, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def train_to_answer(model, tokenizer, steps: int = 100, lr: float = 3e-3):
    """Fine-tune ``model`` on ``PROMPTS`` -> ``ANSWERS`` chats until its greedy answers are
    confident: the margins along its greedy paths then exceed ``GREEDY_MARGIN``."""
    rows = [chat_ids(tokenizer, p, a) for p, a in zip(PROMPTS, ANSWERS)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def greedy_with_margins(model, prompts: list[list[int]], max_new_tokens: int, eos_ids):
    """transformers' greedy completion of each unpadded prompt (EOS included where it ended)
    and the smallest top-1 margin (log-probabilities) along it."""
    results = []
    with torch.no_grad():
        for prompt in prompts:
            out = model.generate(
                torch.tensor([prompt]),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                output_scores=True,
                return_dict_in_generate=True,
                eos_token_id=list(eos_ids),
                pad_token_id=eos_ids[0],
            )
            completion = out.sequences[0, len(prompt) :].tolist()
            margins = []
            for scores in out.scores:
                top = torch.log_softmax(scores[0].float(), -1).topk(2).values
                margins.append(float(top[0] - top[1]))
            results.append((completion, min(margins)))
    return results
