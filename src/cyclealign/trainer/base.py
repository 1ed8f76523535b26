"""What both trainers share: the config check, the model (a path, PEFT, dropout), the
ranking loss, the optimizer updates and the step metrics.

:class:`~cyclealign.CycleAlignTrainer` (the cycle) and
:class:`~cyclealign.OfflineRankingTrainer` (fixed ranked data) differ only in where the
candidates and their rewards come from; the loss path is this one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from accelerate.utils import DistributedType
from transformers import Trainer
from transformers.trainer_utils import enable_full_determinism, set_seed

from ..config import CycleAlignConfig
from ..logprobs import accepts_logits_to_keep
from ..losses import get_ranking_loss
from ..models import disable_dropout, load_model_and_tokenizer, wrap_with_peft
from ..sampling import eos_token_ids
from . import fsdp
from .model_card import TAGS, write_model_card
from .stats import CycleMetrics

__all__ = ["RankingTrainerBase", "check_deepspeed_schedule"]

logger = logging.getLogger(__name__)


def check_deepspeed_schedule(config: Mapping[str, Any]) -> None:
    """Refuse a DeepSpeed config with its own ``scheduler`` or ``optimizer`` section.

    The engine steps the learning-rate schedule it owns (its own, or the Trainer's when it
    builds the optimizer) on every engine step, and the cycle steps the engine once per
    round: with ``max_rounds > 1`` the schedule would run up to ``max_rounds`` times too fast
    (it reached 0 after one step on CPU). Without these sections the Trainer owns both and
    steps the schedule once per training step, as without DeepSpeed.
    """
    sections = [name for name in ("scheduler", "optimizer") if name in config]
    if sections:
        raise ValueError(
            f"The DeepSpeed config has its own {' and '.join(repr(x) for x in sections)} "
            f"section{'s' if len(sections) > 1 else ''}: DeepSpeed would then step the "
            "learning-rate schedule on every round of the cycle (max_rounds times per training "
            f"step) instead of once per step. Remove the {' and '.join(sections)} "
            f"section{'s' if len(sections) > 1 else ''} from the DeepSpeed JSON and set the "
            "optimizer and schedule with the Trainer's arguments (learning_rate, "
            "lr_scheduler_type, warmup_steps, weight_decay, optim), or use max_rounds=1."
        )


def warn_if_weights_cannot_learn(model: torch.nn.Module, deepspeed: bool) -> None:
    """Warn when the trained weights are half precision and the optimizer updates them in
    place: updates below half of a weight's ulp (bf16: ~0.4 % of it) round away."""
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    half = sorted(str(d).replace("torch.", "") for d in dtypes & {torch.bfloat16, torch.float16})
    if half and not deepspeed:
        logger.warning(
            "The trained weights are %s, and the optimizer updates them in place: an update "
            "smaller than the weight's precision (about 0.4%% of a weight in bfloat16) is "
            "rounded away, so at small learning rates (the paper's 5e-7) almost nothing is "
            'learned. Load fp32 weights (drop "dtype" from model_init_kwargs) and set '
            "bf16=True, which computes in bfloat16 with fp32 master weights; or train under "
            "DeepSpeed with bf16 (it keeps fp32 master weights).",
            " and ".join(half),
        )


class RankingTrainerBase(Trainer):
    """A :class:`transformers.Trainer` that trains a causal LM with a ranking loss.

    Subclasses give the collator (``make_collator(tokenizer, args, eos_token_ids)``, called once the
    model and tokenizer are loaded) and the training step.

    Args:
        model: a causal LM, or a local path / hub id loaded with
            ``AutoModelForCausalLM.from_pretrained(model, **args.model_init_kwargs)``.
        args: a :class:`~cyclealign.CycleAlignConfig` (default: one writing to
            ``cyclealign-output``).
        train_dataset, eval_dataset: the datasets (what their rows hold is the subclass's).
        processing_class: the tokenizer; loaded from ``model`` when it is a path.
        peft_config: wrap the model with ``peft.get_peft_model``; only the adapter trains.
        quantization_config: a ``transformers.BitsAndBytesConfig`` (TRL's
            ``get_quantization_config``) for a model loaded from a path.
        callbacks, optimizers: as in :class:`transformers.Trainer`.
    """

    def __init__(
        self,
        model: Any,
        args: CycleAlignConfig | None = None,
        *,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        quantization_config: Any = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        make_collator: Callable[[Any, CycleAlignConfig, list[int]], Any],
    ) -> None:
        if args is None:
            args = CycleAlignConfig(output_dir="cyclealign-output")
        elif not isinstance(args, CycleAlignConfig):
            raise TypeError(
                f"{type(self).__name__}: args must be a CycleAlignConfig, got "
                f"{type(args).__name__}. Build one with CycleAlignConfig(output_dir=..., ...)."
            )
        args._validate()  # fields may have been changed after construction
        # Seeded before the model and its adapter are made (PEFT initialises the adapter at
        # random), as TRL does: the same seed gives the same adapter whatever the RNG state.
        if args.full_determinism:
            enable_full_determinism(args.seed)
        else:
            set_seed(args.seed)
        model, processing_class = load_model_and_tokenizer(
            model, args, processing_class, quantization_config
        )
        if peft_config is not None:
            model = wrap_with_peft(model, peft_config, args)
        if args.disable_dropout:
            disable_dropout(model)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        self.loss_fn = get_ranking_loss(args.ranking_loss, **(args.ranking_loss_kwargs or {}))
        self._metrics = CycleMetrics()
        eos_ids = eos_token_ids(model, processing_class)
        super().__init__(
            model=model,
            args=args,
            data_collator=make_collator(processing_class, args, eos_ids),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.eos_token_ids = eos_ids
        self._logits_to_keep = accepts_logits_to_keep(self.model)
        warn_if_weights_cannot_learn(self.model, self.is_deepspeed_enabled)
        #: The training data's name in the model card (a hub id, or a local folder).
        self.dataset_name: str | None = None
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(list(TAGS))

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write ``output_dir/README.md`` with TRL's ``generate_model_card``
        (:mod:`cyclealign.trainer.model_card`); ``push_to_hub`` uploads it with the model.
        ``dataset_name`` defaults to :attr:`dataset_name`."""
        if tags and hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags([tags] if isinstance(tags, str) else list(tags))
        write_model_card(self, self.args.output_dir, model_name, dataset_name or self.dataset_name)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        fsdp.enable_fsdp_on_cpu(self)  # accelerate drops FSDP on CPUs without a word

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is not None and fsdp.fsdp_version(self.accelerator) == 1:
            fsdp.init_optimizer_state(getattr(self.optimizer, "optimizer", self.optimizer))
        super()._load_optimizer_and_scheduler(checkpoint)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        fsdp.refuse_evaluation_before_wrapping(self)
        return super().evaluate(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """As :meth:`transformers.Trainer.save_model`, plus the model card (so every checkpoint
        has one too). Under FSDP with sharded state dicts the final save gathers full weights,
        which the Trainer's would not write; checkpoints stay sharded."""
        if _internal_call:  # a checkpoint: saved as configured (sharded under FSDP)
            super().save_model(output_dir, _internal_call)
        else:
            save = super().save_model
            fsdp.save_model_with_weights(
                self, output_dir or self.args.output_dir, lambda: save(output_dir)
            )
        write_model_card(self, output_dir or self.args.output_dir, dataset_name=self.dataset_name)

    def _update(self, model: torch.nn.Module, loss: torch.Tensor, last: bool) -> torch.Tensor:
        """Backpropagate ``loss``; unless ``last``, also step the optimizer (the Trainer steps
        after the last one, with the learning-rate schedule). Returns ``loss`` detached."""
        kwargs = {}
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            kwargs["scale_wrt_gas"] = False
        # Under DeepSpeed this also clips, steps and zeroes (the engine's step).
        self.accelerator.backward(loss, **kwargs)
        if not last and not self.is_deepspeed_enabled:
            if self.args.max_grad_norm is not None and self.args.max_grad_norm > 0:
                self._clip_grad_norm(model)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _training_metrics(self) -> dict[str, float]:
        """The step metrics collected since the last log (means over steps)."""
        return self._metrics.pop_means()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:  # evaluation adds its own metrics in evaluation_loop
            logs = {**logs, **self._training_metrics()}
        super().log(logs, start_time)
