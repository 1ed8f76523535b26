"""Rankers that run in-process: a reward model, a local chat model (and, re-exported from
:mod:`cyclealign.rankers.reward_functions`, reward functions).

They have the black-box interface, so the trainer, the cache-free tests and the offline
CPU demo use them like any API. None of them can fail to parse: a reward gives a score
per response, and :class:`LocalChatRanker` *chooses* among well-formed answers instead of
generating free text (a small model rarely writes a valid permutation on its own).

``usage.requests`` counts the requests ranked (one per prompt, as an API ranker makes one
call per prompt), whatever the batching.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from ..logprobs import sequence_token_logps
from ..prompts import as_messages, render_chat
from ..types import RankRequest, RankResult, Usage
from .base import BlackBoxRanker
from .prompt import RankingTemplate
from .reward_functions import FunctionRanker, ranking_from_scores, scored_results

__all__ = [
    "FunctionRanker",
    "LocalChatRanker",
    "PrefixState",
    "RewardModelRanker",
    "ranking_from_scores",
]

logger = logging.getLogger(__name__)


def _load(model: Any, tokenizer: Any, auto_class: str) -> tuple[Any, Any]:
    import transformers

    if isinstance(model, (str, os.PathLike)):
        from ..models import outside_zero3

        path = str(model)
        with outside_zero3():  # a frozen judge is no part of the engine: keep it whole
            model = getattr(transformers, auto_class).from_pretrained(path)
        tokenizer = tokenizer or transformers.AutoTokenizer.from_pretrained(path)
    if tokenizer is None:
        raise ValueError("Pass the tokenizer when the model is an already loaded model.")
    model.eval()
    return model, tokenizer


class RewardModelRanker(BlackBoxRanker):
    """Rank by a local ``AutoModelForSequenceClassification`` reward model.

    Each (prompt, response) is a chat ending with the response (the tokenizer's chat
    template) or ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` text without one. Texts longer than
    ``max_length`` tokens lose their beginning: the response, at the end, is what is judged.
    The score is logit 0: reward models have one label; a model with several labels is
    taken to put "good" first (for a classifier whose label 0 means "bad", wrap it in a
    :class:`FunctionRanker` instead). Scoring runs under ``no_grad`` in eval mode.
    """

    writes_better_responses = False

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        batch_size: int = 8,
        max_length: int = 1024,
        device: str | torch.device | None = None,
    ) -> None:
        self.model, self.tokenizer = _load(model, tokenizer, "AutoModelForSequenceClassification")
        if device is not None:
            self.model.to(device)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.max_length = max_length

    def text(self, prompt: Any, response: str) -> str:
        """The text scored for one (prompt, response) pair: the conversation ending with the
        response (:func:`cyclealign.prompts.render_chat`; a string prompt is one user turn),
        or an HH-RLHF style string ending with ``"Assistant:"`` followed by the response."""
        messages = as_messages(prompt)
        raw_hh = messages is None and prompt.rstrip().endswith("Assistant:")
        if raw_hh and not self.tokenizer.chat_template:  # HH-RLHF text, as the data has it
            return f"{prompt} {response}"
        messages = messages or [{"role": "user", "content": prompt}]
        return render_chat(
            [*messages, {"role": "assistant", "content": response}],
            self.tokenizer,
            add_generation_prompt=False,
        )

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """Reward of each (prompt, response) pair, in batches."""
        texts = [self.text(p, r) for p, r in zip(prompts, responses, strict=True)]
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(
                texts[start : start + self.batch_size],
                # A chat template writes its own special tokens (a second BOS would skew it).
                add_special_tokens=not self.tokenizer.chat_template,
            ).input_ids
            # Truncated from the left by hand: the tokenizer's own side is the caller's setting.
            batch = self.tokenizer.pad(
                {"input_ids": [ids[-self.max_length :] for ids in encoded]}, return_tensors="pt"
            ).to(device)
            scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores

    def rank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        self.usage.requests += len(requests)
        prompts = [r.prompt for r in requests for _ in r.responses]
        responses = [c for r in requests for c in r.responses]
        return scored_results(requests, self.score(prompts, responses), self.usage)


def _common_prefix(texts: Sequence[str]) -> str:
    first, last = min(texts), max(texts)  # the lexicographic extremes bound every text
    size = next((i for i, (a, b) in enumerate(zip(first, last)) if a != b), len(first))
    return first[:size]


class PrefixState(NamedTuple):
    """A prefix run through the model: what scoring a continuation of it needs."""

    cache: Any
    last_logits: torch.Tensor
    last_token: torch.Tensor


class LocalChatRanker(BlackBoxRanker):
    """The black-box prompt, demonstrations and answer format, on an in-process chat model.

    The model does not write its answer: every well-formed answer is scored by its
    log-probability after the ranking prompt, and the most likely one wins. For
    ``n <= max_permutations_n`` responses that is every permutation (exact); beyond, the
    ranking is built one position at a time, each time choosing the most likely next index
    among those left. Either way the result is a valid permutation.

    The model is put in eval mode and its parameters frozen: it is a judge, so pass a
    separate model, not the policy being trained.

    Args:
        model: a causal LM or a local path.
        tokenizer: its tokenizer (loaded from ``model`` when a path).
        template: the :class:`RankingTemplate` (the OpenAI ranker's default).
        seed: fixes the display order of the responses.
        max_permutations_n: largest ``n`` scored exhaustively (``n!`` answers).
        batch_size: answers scored per forward pass.
    """

    writes_better_responses = False

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        template: RankingTemplate | None = None,
        seed: int = 0,
        max_permutations_n: int = 5,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ) -> None:
        self.model, self.tokenizer = _load(model, tokenizer, "AutoModelForCausalLM")
        if device is not None:
            self.model.to(device)
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.template = template or RankingTemplate()
        self.seed = seed
        self.max_permutations_n = max_permutations_n
        self.batch_size = batch_size
        # transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name
        # is removed in 5.40); older versions only know the old one.
        forward = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"

    def _forward_with_cache(self, cache: Any, **inputs: Any) -> tuple[torch.Tensor, Any]:
        out = self.model(**inputs, **{self._cache_arg: cache})
        new_cache = getattr(out, "cache", None)
        return out.logits, new_cache if new_cache is not None else out.past_key_values

    def _prompt_ids(self, messages: list[dict[str, str]]) -> torch.Tensor:
        text = render_chat(messages, self.tokenizer)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        return ids.to(next(self.model.parameters()).device)

    @torch.no_grad()
    def encode_prefix(self, ids: torch.Tensor, after: PrefixState | None = None) -> PrefixState:
        """Run ``ids`` (``[1, P]``), after a copy of the ``after`` state when given.

        The state (key/value cache, the last position's logits, the last token) lets many
        continuations, and longer prefixes, be scored without running the prefix again.
        """
        cache = copy.deepcopy(after.cache) if after is not None else None
        logits, cache = self._forward_with_cache(cache, input_ids=ids, use_cache=True)
        return PrefixState(cache, logits[:, -1].float(), ids[:, -1:])

    @torch.no_grad()
    def score_continuations(
        self, prefix: torch.Tensor | PrefixState, texts: Sequence[str]
    ) -> list[float]:
        """Summed log-prob of each text right after ``prefix`` (``[1, P]`` ids or a state).

        The prefix runs once; its key/value cache is copied for each batch of texts.
        """
        state = prefix if isinstance(prefix, PrefixState) else self.encode_prefix(prefix)
        device = state.last_token.device
        encoded = [
            self.tokenizer(t, add_special_tokens=False).input_ids or [self.tokenizer.eos_token_id]
            for t in texts
        ]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        scores: list[float] = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            width = max(len(c) for c in chunk)
            ids = torch.tensor([c + [pad] * (width - len(c)) for c in chunk], device=device)
            mask = torch.tensor(
                [[1] * len(c) + [0] * (width - len(c)) for c in chunk], device=device
            )
            cache = copy.deepcopy(state.cache)
            prefix_len = cache.get_seq_length()
            cache.batch_repeat_interleave(len(chunk))
            full_mask = torch.cat([mask.new_ones(len(chunk), prefix_len), mask], dim=1)
            logits, _ = self._forward_with_cache(cache, input_ids=ids, attention_mask=full_mask)
            # The first text token is predicted by the prefix's last position: prepend it,
            # with the prefix's last token, so the usual causal shift lines everything up.
            rows = len(chunk)
            logits = torch.cat([state.last_logits.expand(rows, -1)[:, None], logits.float()], 1)
            targets = torch.cat([state.last_token.expand(rows, 1), ids], dim=1)
            logps, scored = sequence_token_logps(
                logits, targets, torch.cat([mask.new_zeros(rows, 1), mask], dim=1)
            )
            scores += (logps * scored).sum(-1).tolist()
        return scores

    def _rank_one(self, request: RankRequest) -> RankResult:
        n = len(request.responses)
        messages, order = self.template.build_messages(request, seed=self.seed)
        prompt = self.encode_prefix(self._prompt_ids(messages))
        if n <= self.max_permutations_n:
            perms = [list(p) for p in itertools.permutations(range(n))]
            answers = [self.template.answer_text(p) for p in perms]
            # The text all answers share ("### The desired ranking is: [") adds the same
            # log-prob to each: run it once with the prompt and score only the rest.
            shared = _common_prefix(answers) if n > 1 else ""
            if shared:
                ids = self.tokenizer(shared, add_special_tokens=False, return_tensors="pt")
                prompt = self.encode_prefix(ids.input_ids.to(prompt.last_token.device), prompt)
            scores = self.score_continuations(prompt, [a[len(shared) :] for a in answers])
            # max() keeps the first of equal scores: ties go to the earlier permutation.
            displayed = perms[max(range(len(perms)), key=scores.__getitem__)]
        else:
            displayed = self._greedy(prompt, n)
        return RankResult(
            ranking=self.template.map_back(displayed, order),
            raw_text=self.template.answer_text(displayed),
            usage=Usage(requests=1),
        )

    def _greedy(self, prompt: PrefixState, n: int) -> list[int]:
        chosen: list[int] = []
        remaining = list(range(n))
        while len(remaining) > 1:
            # The answer so far ends with "[" or ","; each candidate brings its own leading
            # space (" 3,"), the way BPE vocabularies join a space to the word after it.
            prefix_text = self.template.answer_text(chosen).rsplit("]", 1)[0]
            prefix_text += "," if chosen else ""
            ids = self.tokenizer(prefix_text, add_special_tokens=False, return_tensors="pt")
            state = self.encode_prefix(ids.input_ids.to(prompt.last_token.device), after=prompt)
            space = " " if chosen else ""
            if len(remaining) == 2:  # the last two orders are the whole rest of the answer
                a, b = remaining
                end = "]" + self.template.answer_suffix
                texts = [f"{space}{a}, {b}{end}", f"{space}{b}, {a}{end}"]
            else:
                texts = [f"{space}{i}," for i in remaining]
            scores = self.score_continuations(state, texts)
            best = remaining[max(range(len(remaining)), key=scores.__getitem__)]
            chosen.append(best)
            remaining.remove(best)
        return chosen + remaining

    def rank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        results = []
        for request in requests:
            self.usage.requests += 1
            if len(request.responses) == 0:
                self.usage.failures["empty"] += 1
                results.append(RankResult(None, error="no responses to rank"))
                continue
            results.append(self._rank_one(request))
        return results
