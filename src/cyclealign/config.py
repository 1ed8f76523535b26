"""Training arguments of :class:`~cyclealign.CycleAlignTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from transformers import TrainingArguments

from .config_checks import CHOICES, deepspeed_without_accelerator, parse_dict, validate_config

__all__ = ["CycleAlignConfig"]


@dataclass
class CycleAlignConfig(TrainingArguments):
    r"""
    Configuration of [`CycleAlignTrainer`].

    Only the parameters specific to CycleAlign are listed here; see
    [`~transformers.TrainingArguments`] for the rest. Every field works from Python, YAML and
    the command line ([`~transformers.HfArgumentParser`]); dict-valued fields also accept a
    JSON object as a string (`--generation_kwargs '{"top_k": 50}'`). No API key is ever a
    field: rankers read their keys from the environment.

    Parameters:
        > Parameters that control the model

        model_init_kwargs (`dict[str, Any]` or `str`, *optional*):
            Keyword arguments for [`~transformers.AutoModelForCausalLM.from_pretrained`], used when
            the trainer's `model` is a path or hub id (for example `{"dtype": "bfloat16"}`). A
            string `dtype` is turned into the `torch` dtype. With `gguf_file`, the GGUF checkpoint
            is converted once to safetensors under `output_dir/gguf-safetensors` (transformers
            cannot save a GGUF-loaded model, so checkpoints would fail otherwise).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow models and tokenizers that ship their own Python code on the Hub, for the
            white-box model and its tokenizer (TRL's field, as in `GRPOConfig`).
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Set every dropout probability of the model (adapters' included) to 0. The white-box
            ranking compares the model's own log-likelihoods of the candidates; dropout would add
            noise to them (and to sampling). As in TRL's `DPOConfig`.

        > Parameters that control the data and generation

        max_prompt_length (`int` or `None`, *optional*, defaults to `256`):
            Prompts longer than this many tokens lose their oldest tokens (left truncation keeps
            the end of the conversation, where the question is). `None` keeps everything. The
            black box is shown the same truncated conversation, with `[...]` where it was cut.
        invalid_rows (`str`, *optional*, defaults to `"drop"`):
            What to do with dataset rows whose prompt cannot be trained on (missing or `None`,
            not a string or messages, empty, a message with an unknown role or without
            content), found before anything is sent to the black box: `"drop"` them, with a
            count per reason in the log and the end-of-run summary (`data/invalid_rows`), or
            `"error"`: refuse the dataset, listing the first few. Map-style datasets are checked
            when the trainer is built; iterable datasets as their rows are read.
        num_generations (`int`, *optional*, defaults to `4`):
            Responses sampled per prompt in each round. Identical samples of one prompt are
            collapsed, so a prompt may end up with fewer candidates.
        max_completion_length (`int`, *optional*, defaults to `64`):
            Length limit of a sampled response. A response cut by this limit has no EOS; one that
            ended by itself keeps its EOS as a scored token.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature (> 0).
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling mass in (0, 1]. `1.0` considers every token.
        top_k (`int`, *optional*, defaults to `0`):
            Keep only the `top_k` most likely tokens at each step. `0` disables top-k filtering.
        min_p (`float` or `None`, *optional*):
            Minimum token probability, scaled by the probability of the most likely token, in
            [0, 1] (typical values 0.01-0.2). `None` disables it.
        repetition_penalty (`float`, *optional*, defaults to `1.0`):
            Penalty (> 0) for tokens already in the prompt or the response so far: above `1.0`
            encourages new tokens, below `1.0` repetition. `1.0` disables it.
        stop_strings (`list[str]` or `None`, *optional*):
            A response ends before the first of these strings (transformers' `stop_strings`;
            `generation_kwargs={"stop_strings": [...]}` works too). It counts as finished: it
            gets the EOS that a response which ended by itself scores. For prompts in
            HH-RLHF's raw `Human:`/`Assistant:` format, PRO's list
            (`cyclealign.data.hh_rlhf.HH_RLHF_STOP_STRINGS`) stops a base model from writing
            the next turns itself. `None`: none.
        generation_kwargs (`dict[str, Any]` or `str`, *optional*):
            Extra [`~transformers.GenerationConfig`] fields. Where one names a parameter above
            (`top_k`, `min_p`, ...), it overrides that parameter, as in TRL.
        chat_template_kwargs (`dict[str, Any]` or `str`, *optional*):
            Extra keyword arguments of `apply_chat_template` for message-list prompts (for
            example `{"enable_thinking": false}`), as in TRL. String prompts are raw text.

        > Parameters that control generation with vLLM

        use_vllm (`bool`, *optional*, defaults to `False`):
            Sample the rounds' responses with a vLLM engine instead of transformers'
            `generate` (GPU: `pip install "cyclealign[vllm]"`; CPU: `scripts/vllm-env.sh`,
            see docs/trainer.md). The engine samples from the latest update: the weights that
            can have changed are sent to it before every round that follows one. The
            white-box ranking and the loss still come from the training model.
        vllm_mode (`str`, *optional*, defaults to `"colocate"`):
            `"colocate"`: one engine inside each training process, as in TRL. TRL's
            `"server"` mode is not offered: the cycle syncs weights after every round.
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            Fraction of GPU memory the engine reserves for weights, activations and KV cache
            (TRL's default). On CPUs see `vllm_kv_cache_memory_bytes`.
        vllm_max_model_length (`int` or `None`, *optional*):
            The engine's context length (prompt and response). `None`: `max_prompt_length +
            max_completion_length` (the collator truncates prompts), else the model's.
        vllm_dtype (`str`, *optional*, defaults to `"auto"`):
            The engine's dtype: `"auto"` is the training model's (unlike vLLM's own `"auto"`,
            which runs fp32 checkpoints in half precision), or `"float32"`, `"bfloat16"`,
            `"float16"`.
        vllm_enforce_eager (`bool`, *optional*, defaults to `False`):
            Run the engine without compilation (vLLM's `enforce_eager`): it starts in seconds
            instead of 45-90 s (SmolLM2 on a CPU, where every start compiles) and samples
            8-15 % more slowly there.
        vllm_kv_cache_memory_bytes (`int` or `None`, *optional*):
            Bytes of KV cache (vLLM's `kv_cache_memory_bytes`). `None`: on GPUs what
            `vllm_gpu_memory_utilization` leaves, on CPUs 1 GiB (there vLLM's
            `gpu_memory_utilization` would be a fraction of the machine's memory).

        > Parameters that control the cycle

        max_rounds (`int`, *optional*, defaults to `5`):
            Generate-rank-agree-optimize rounds per training step (the paper's threshold of
            interaction times). Every round with a usable ranking updates the weights.
            Offline training (`ranker=None`, ranked data) has no rounds: one update per step.
        stop_on_full_agreement (`bool`, *optional*, defaults to `True`):
            End the step after the first round in which the black-box and white-box rankings of
            every prompt (on every process) agree fully. That round still updates the weights.
        use_better_response (`bool`, *optional*, defaults to `True`):
            Train on the improved response the ranker returns (`RankResult.better_response`),
            as in the paper. An `OpenAIRanker` built with `request_better_response=None` (its
            default) then asks for one.
        better_response_as (`str`, *optional*, defaults to `"sft_target"`):
            How it is used: `"sft_target"` (the paper's "better response for supervised
            fine-tuning": the loss's SFT term trains on it instead of the best sampled
            response, and it takes no part in the ranking term) or `"candidate"` (it also
            joins the ranking as an extra candidate above all sampled ones, so PRO's SFT weight
            counts it as a fifth candidate). With `"sft_target"`, PRO's SFT weight
            `sft_weight * (k - 1) ** 2` counts the prompt's sampled candidates only: `k = 4`
            (0.45 at `sft_weight=0.05`) for 4 distinct samples, fewer where identical samples
            were collapsed into one candidate.
        ranker_failure_policy (`str`, *optional*, defaults to `"skip"`):
            What a prompt whose ranking failed trains on: `"skip"` (nothing) or `"whitebox"` (the
            white-box model's own ranking as target). Outages (timeouts, 5xx, 429, refused
            connections) never stop training; see `max_failed_steps` for the rest.
        max_failed_steps (`int` or `None`, *optional*, defaults to `3`):
            End training with an error, after saving a checkpoint, once this many consecutive
            steps had no usable black-box ranking because of failures no retry fixes
            (unparseable answers, refusals, HTTP 4xx other than 408/429, a rejected key, an
            exhausted budget). Counted whatever `ranker_failure_policy` is: a `"whitebox"`
            fallback is still a step without a black-box ranking. `None`: never stop.
        reward_from_ranking (`str`, *optional*, defaults to `"linear"`):
            How a ranking becomes rewards: `"linear"` gives ranks `n-1, ..., 0` best-first;
            `"scores"` uses the ranker's `scores` where it returns them (one finite value per
            response) and falls back to linear otherwise.
        ranking_deadline (`float` or `None`, *optional*):
            Seconds a round waits for the black box's rankings, counted from when they are sent.
            Past it, the missing rankings count as failures for that round (`ranker/late`) and
            training goes on. Nothing is cancelled: an answer that comes later is still cached
            (it was paid for) and used by a re-run. `None`: the ranker's own bound
            (`BlackBoxRanker.deadline_s`; for `OpenAIRanker`, every attempt of each request and
            its repair running to `timeout`, with the backoffs, in waves of `max_concurrency`),
            and no deadline for a ranker that gives none.

        > Parameters that control the demonstrations

        use_dynamic_demonstrations (`bool`, *optional*, defaults to `True`):
            Show agreements from earlier rounds to the ranker as in-context demonstrations.
            `False` is the paper's "w/o D2" ablation: the pool stays empty.
        use_static_demonstration (`bool`, *optional*, defaults to `True`):
            Show the ranker template's hand-written demonstration. `False` makes the trainer
            replace the ranker's `template` (a `RankingTemplate`, as `OpenAIRanker` and
            `LocalChatRanker` have) with a copy without it; other rankers get a warning. Both
            switches `False` is the paper's "w/o ICL" (the bare instruction).
        demonstration_max_tokens (`int` or `None`, *optional*, defaults to `4096`):
            Prompt-token budget of the dynamic demonstrations sent with one ranking request: as
            many as fit are sent, the most relevant first (the agreements of earlier rounds on
            the same prompt, then by `demonstration_selection`), so the prompt grows with the
            pool, as in the paper, and stays bounded. Counted with the ranker's tokenizer where
            it has one (`LocalChatRanker`), otherwise estimated at 4 characters a token. 4096
            holds at least four demonstrations of 4 responses of 128 tokens with prompts of 384
            tokens (the reproduction settings). `None`: no budget (then set
            `max_demonstrations`).
        max_demonstrations (`int` or `None`, *optional*):
            At most this many dynamic demonstrations per request, within the token budget.
            `None`: no cap.
        demonstration_selection (`str`, *optional*, defaults to `"recent"`):
            Which pool entries to show first: `"recent"` or `"similar"` (closest prompts).
        demonstration_pool_size (`int`, *optional*, defaults to `256`):
            Agreements kept in the pool; the oldest are dropped first.

        > Parameters that control the loss

        ranking_loss (`str`, *optional*, defaults to `"pro"`):
            Name of a registered ranking loss (`"pro"`, `"rrhf"` or a plugin).
        ranking_loss_kwargs (`dict[str, Any]` or `str`, *optional*):
            Keyword arguments of the ranking loss (for example `{"sft_weight": 0.05}`).

        > Parameters that control compute and logging

        scoring_batch_size (`int` or `None`, *optional*):
            Sequences per call in the no-grad work: each `generate` call samples at most this
            many sequences, and evaluation scores candidates in passes of this size. `None`:
            one call for the whole batch. Bounds peak memory; the training forward stays one
            pass because the loss needs every candidate in one graph.
        round_log (`bool`, *optional*, defaults to `False`):
            Append every round's prompts, candidates, both rankings, the raw black-box answer
            and the agreement to `output_dir/round_log.jsonl`.
        log_completions (`bool`, *optional*, defaults to `False`):
            At every log, show the latest step's rounds (prompt, responses, both rankings,
            agreement, better response): printed with `rich` when it is installed, and as a
            `completions` table to every tracker in `report_to` that takes tables (`wandb`,
            `trackio`). TRL's name and default.
        num_completions_to_print (`int` or `None`, *optional*):
            Rows printed to the console per log (a sample); `None` prints all. The trackers
            always get all. TRL's name and default.

    > [!NOTE]
    > Defaults that differ from [`~transformers.TrainingArguments`]:
    > - `remove_unused_columns`: `False` (the trainer needs the raw `prompt` column and the
    >   ranker the other columns), as in TRL's `GRPOConfig`.
    > - `learning_rate`: `1e-6` instead of `5e-5`, as in `GRPOConfig`.
    > - `logging_steps`: `10` instead of `500`, as in `GRPOConfig`.
    > - `num_train_epochs`: `1.0` instead of `3.0` (the paper trains one epoch).
    > - `per_device_train_batch_size`: `2` instead of `8` (each prompt becomes
    >   `num_generations` sequences, up to `max_rounds` times per step).
    >
    > Defaults that differ from TRL's `GRPOConfig`, with the reasons, are listed in
    > `docs/trainer.md`.
    >
    > `gradient_accumulation_steps` must stay `1`: rounds update the weights between each
    > other, so accumulating across micro-batches would mix gradients of different models.
    > Raise `per_device_train_batch_size` instead.
    """

    _VALID_DICT_FIELDS: ClassVar[list[str]] = [
        *TrainingArguments._VALID_DICT_FIELDS,
        "model_init_kwargs",
        "generation_kwargs",
        "chat_template_kwargs",
        "ranking_loss_kwargs",
    ]

    # -- defaults changed from TrainingArguments --------------------------------------------
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Keep dataset columns the model does not take; the trainer needs `prompt`."
        },
    )
    learning_rate: float = field(
        default=1e-6, metadata={"help": "The initial learning rate for AdamW (GRPO's default)."}
    )
    logging_steps: float = field(
        default=10,
        metadata={
            "help": "Log every X update steps (an int, or a float in [0, 1) for a ratio of the total)."
        },
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Training epochs to perform."})
    per_device_train_batch_size: int = field(
        default=2, metadata={"help": "Prompts per device in a training step."}
    )

    # -- model --------------------------------------------------------------------------------
    model_init_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `AutoModelForCausalLM.from_pretrained` when `model` is a "
            'path or hub id, e.g. \'{"dtype": "bfloat16"}\'.'
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow models and tokenizers with custom code from the Hub."},
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Set all dropout to 0: dropout would add noise to the white-box ranking."
        },
    )

    # -- data and generation -----------------------------------------------------------------
    max_prompt_length: int | None = field(
        default=256,
        metadata={"help": "Prompts longer than this (tokens) are left-truncated. None: no limit."},
    )
    invalid_rows: str = field(
        default="drop",
        metadata={
            "help": "Rows whose prompt cannot be trained on: 'drop' (and count them) or 'error'.",
            "choices": list(CHOICES["invalid_rows"]),
        },
    )
    num_generations: int = field(
        default=4, metadata={"help": "Responses sampled per prompt per round."}
    )
    max_completion_length: int = field(
        default=64, metadata={"help": "Maximum tokens of a sampled response."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1]."})
    top_k: int = field(
        default=0, metadata={"help": "Top-k filtering: keep the k most likely tokens. 0: off."}
    )
    min_p: float | None = field(
        default=None,
        metadata={
            "help": "Minimum token probability relative to the most likely token, in [0, 1]. "
            "None: off."
        },
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={"help": "Penalty (> 0) for tokens already seen; > 1.0 discourages repeats."},
    )
    stop_strings: list[str] | None = field(
        default=None,
        metadata={
            "help": "A response ends before the first of these strings and counts as finished "
            "(it gets an EOS). None: none."
        },
    )
    generation_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Extra GenerationConfig fields; where one names a field above, it wins."},
    )
    chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Extra apply_chat_template kwargs for message prompts, as in TRL."},
    )

    # -- generation with vLLM -----------------------------------------------------------------
    use_vllm: bool = field(
        default=False,
        metadata={"help": "Sample the responses with a colocated vLLM engine, synced per round."},
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "'colocate': one engine in each training process.",
            "choices": list(CHOICES["vllm_mode"]),
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "Fraction of GPU memory the engine reserves."}
    )
    vllm_max_model_length: int | None = field(
        default=None,
        metadata={
            "help": "Engine context length. None: max_prompt_length + max_completion_length."
        },
    )
    vllm_dtype: str = field(
        default="auto",
        metadata={
            "help": "Engine dtype; 'auto': the training model's.",
            "choices": list(CHOICES["vllm_dtype"]),
        },
    )
    vllm_enforce_eager: bool = field(
        default=False, metadata={"help": "No compilation: faster start-up, slower sampling."}
    )
    vllm_kv_cache_memory_bytes: int | None = field(
        default=None,
        metadata={"help": "Bytes of KV cache. None: GPU from the fraction, CPU 1 GiB."},
    )

    # -- the cycle ------------------------------------------------------------------------------
    max_rounds: int = field(default=5, metadata={"help": "Rounds per training step."})
    stop_on_full_agreement: bool = field(
        default=True,
        metadata={
            "help": "End the step after a round where every prompt's two rankings agree fully."
        },
    )
    use_better_response: bool = field(
        default=True,
        metadata={"help": "Train on the ranker's improved response when it gives one."},
    )
    better_response_as: str = field(
        default="sft_target",
        metadata={
            "help": "'sft_target' (the SFT term trains on it, as in the paper) or 'candidate' "
            "(it also joins the ranking as the top candidate).",
            "choices": list(CHOICES["better_response_as"]),
        },
    )
    ranker_failure_policy: str = field(
        default="skip",
        metadata={
            "help": "Target for prompts whose ranking failed: 'skip' or 'whitebox'.",
            "choices": list(CHOICES["ranker_failure_policy"]),
        },
    )
    max_failed_steps: int | None = field(
        default=3,
        metadata={
            "help": "Stop (after a checkpoint) after this many consecutive steps without a "
            "black-box ranking, from failures no retry fixes. None: never."
        },
    )
    reward_from_ranking: str = field(
        default="linear",
        metadata={
            "help": "Rewards from a ranking: 'linear' (n-1..0) or 'scores' (the ranker's scores).",
            "choices": list(CHOICES["reward_from_ranking"]),
        },
    )
    ranking_deadline: float | None = field(
        default=None,
        metadata={
            "help": "Seconds a round waits for its rankings; later ones fail for the round (and "
            "are cached when they come). None: the ranker's own bound."
        },
    )

    # -- demonstrations -----------------------------------------------------------------------
    use_dynamic_demonstrations: bool = field(
        default=True,
        metadata={"help": "Show earlier agreements to the ranker. False: the paper's 'w/o D2'."},
    )
    use_static_demonstration: bool = field(
        default=True,
        metadata={
            "help": "Show the ranker template's static demonstration. False with "
            "use_dynamic_demonstrations=False: the paper's 'w/o ICL'."
        },
    )
    demonstration_max_tokens: int | None = field(
        default=4096,
        metadata={
            "help": "Prompt tokens of the dynamic demonstrations per ranking request: as many "
            "as fit are sent (>= 4 of 4 responses x 128 tokens at 4096). None: no budget."
        },
    )
    max_demonstrations: int | None = field(
        default=None,
        metadata={"help": "At most this many dynamic demonstrations per request. None: no cap."},
    )
    demonstration_selection: str = field(
        default="recent",
        metadata={
            "help": "Which demonstrations to show: 'recent' or 'similar'.",
            "choices": list(CHOICES["demonstration_selection"]),
        },
    )
    demonstration_pool_size: int = field(
        default=256, metadata={"help": "Agreements kept in the demonstration pool."}
    )

    # -- loss -----------------------------------------------------------------------------------
    ranking_loss: str = field(
        default="pro", metadata={"help": "Registered ranking loss: 'pro', 'rrhf' or a plugin."}
    )
    ranking_loss_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the ranking loss."}
    )

    # -- compute and logging ------------------------------------------------------------------
    scoring_batch_size: int | None = field(
        default=None,
        metadata={"help": "Sequences per generate call / no-grad scoring pass. None: no split."},
    )
    round_log: bool = field(
        default=False,
        metadata={"help": "Append every round to output_dir/round_log.jsonl."},
    )
    log_completions: bool = field(
        default=False,
        metadata={"help": "At every log, print the latest rounds and send them to trackers."},
    )
    num_completions_to_print: int | None = field(
        default=None, metadata={"help": "Rows printed per log; None: all (trackers get all)."}
    )

    def __post_init__(self) -> None:
        if self.ddp_backend is None and deepspeed_without_accelerator(self.deepspeed):
            # Left to itself, DeepSpeed on CPUs starts its own process group while the
            # Trainer counts one process, and fails with "train_batch_size is not equal to
            # micro_batch_per_gpu * gradient_acc_step * world_size". gloo is the CPU backend.
            self.ddp_backend = "gloo"
        super().__post_init__()
        for name in (
            "model_init_kwargs",
            "generation_kwargs",
            "chat_template_kwargs",
            "ranking_loss_kwargs",
        ):
            setattr(self, name, parse_dict(name, getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        validate_config(self)
