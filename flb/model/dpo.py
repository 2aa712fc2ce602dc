"""trl DPO settings shared by every client and by the evaluator (client.objective dpo), and the preference margins
the evaluation reports.

The reference model is the base with the adapter disabled: trl would otherwise copy the adapter it is given into a
second "ref" adapter, which in a federation is the global adapter of the round the trainer was built in, not the
base. The log-probability of an answer is the sum over its tokens, as in trl's loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flb.config import DPOSettings, SFTSettings
from flb.model.sft_settings import trainer_arguments

if TYPE_CHECKING:
    import torch

REFERENCE_ADAPTER = "ref"  # the adapter trl adds to a PeftModel as its reference; FLB removes it


def dpo_config(
    settings: SFTSettings, dpo: DPOSettings, *, max_steps: int, output_dir: str | Path, use_cpu: bool, seed: int
):
    """trl's DPOConfig from our settings: the arguments SFT's trainer takes too, dpo's beta and loss."""
    from trl import DPOConfig

    arguments = trainer_arguments(settings, max_steps=max_steps, output_dir=output_dir, use_cpu=use_cpu, seed=seed)
    return DPOConfig(**arguments, beta=dpo.beta, loss_type=[dpo.loss_type])


def quiet_dpo_trainer(model, tokenizer, args, train_dataset, eval_dataset=None):
    """trl's DPOTrainer on the shared peft model, its reference the base (adapter disabled), printing nothing."""
    from datasets.utils.logging import disable_progress_bar
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOTrainer

    disable_progress_bar()
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer
    )
    if REFERENCE_ADAPTER in model.peft_config:
        model.delete_adapter(REFERENCE_ADAPTER)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def tokenized_pairs(trainer, dataset):
    """`dataset`'s pairs tokenized as the DPO trainer tokenizes its train set."""
    return trainer._prepare_dataset(dataset, trainer.processing_class, trainer.args, "train")


def completion_log_probs(model, batch: dict) -> torch.Tensor:
    """log p(answer | prompt) of each row of a DPO batch (trl's collator: the chosen rows, then the rejected ones):
    the sum of the answer tokens' log-probabilities under `model` as it stands (adapter on or off)."""
    import torch

    from flb.model.sft_settings import IGNORE_INDEX, target_log_probs

    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX)
    log_probs, mask = target_log_probs(model, batch["input_ids"], batch["attention_mask"], labels)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(len(labels), dtype=log_probs.dtype, device=log_probs.device).index_add(0, rows, log_probs)


def preference_margins(model, batches) -> torch.Tensor:
    """Per held-out pair, (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)): the policy is
    the model with its adapter, the reference the base with it disabled."""
    import torch

    margins = []
    with torch.no_grad():
        for batch in batches:
            policy = completion_log_probs(model, batch)
            with model.disable_adapter():
                reference = completion_log_probs(model, batch)
            chosen, rejected = (policy - reference).chunk(2)
            margins.append(chosen - rejected)
    return torch.cat(margins)
