"""The sections of the language-model tasks: lm (pretraining and SFT), reward, dpo and ppo."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelcycle.config_sections.base import Section


class LMSection(Section):
    """Language-model runs (run.task=lm or sft, docs/lm.md): data files, context, model size,
    sample generations. ``model.name`` is ``llama`` (built from ``size``) or a model folder."""

    tokenizer: str | None = Field(
        None, description="a tokenizer folder (`modelcycle lm tokenizer`); None: the model folder's own"
    )
    size: Literal["tiny", "small", "base", "medium"] = Field(
        "tiny", description="with model.name=llama (lm/model.py PRESETS)"
    )
    context_length: int = Field(256, ge=8, description="tokens per training sequence")
    train_files: list[str] = Field(
        default_factory=list, description="lm: .txt (blank line between documents) or .jsonl"
    )
    val_files: list[str] = Field(default_factory=list, description="sft: chat (messages) or Alpaca JSONL")
    packing: bool = Field(False, description="sft: several conversations per sequence (pretraining always packs)")
    sample_every: int = Field(0, ge=0, description="optimizer steps between logged sample generations; 0 = off")
    sample_prompts: list[str] = Field(default_factory=list, description="sft: user messages; lm: text to continue")
    sample_tokens: int = Field(48, ge=1, description="new tokens per logged sample")
    eval_samples: int = Field(8, ge=0, description="held-out prompts answered in `modelcycle evaluate`")
    eval_tokens: int = Field(160, ge=1, description="new tokens per answer in `modelcycle evaluate`")
    end_of_turn: str | None = Field(
        None,
        description=(
            "the token that closes an assistant turn (trained after each answer, generation stops at it), e.g. "
            '"<|im_end|>"; None: the one the chat template writes'
        ),
    )
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description=(
            "the package's weights: auto keeps each tensor's dtype of the model the run started from (float32 for "
            "model.name=llama); or every floating tensor in one dtype"
        ),
    )
    tokenizer_mismatch_ok: bool = Field(
        False, description="accept an lm.tokenizer whose tokens or special ids are not the model's"
    )


class RewardSection(Section):
    """``modelcycle lm reward``: a scalar score learned from preference pairs (docs/lm-rlhf.md)."""

    margin_scale: float = Field(1.0, ge=0, description='times each pair\'s "margin" in the loss; 0 ignores the margins')


class DPOSection(Section):
    """``modelcycle lm dpo``: the policy learns from preference pairs directly (docs/lm-rlhf.md)."""

    loss: Literal["sigmoid", "hinge", "ipo", "simpo", "orpo"] = Field(
        "sigmoid", description="sigmoid (DPO), hinge, ipo, simpo or orpo"
    )
    beta: float = Field(
        0.1, gt=0, description="how far from the reference the policy may move; for orpo, the odds term's weight"
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="sigmoid/simpo: the share of pairs assumed mislabelled"
    )
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the reward margin asked for")
    cache_reference: bool = Field(
        True, description="reference log-probabilities computed once before training, not every step"
    )
    reference: str | None = Field(None, description="a model folder or run; None: the model the run starts from")


class PPOSection(Section):
    """``modelcycle lm ppo``: the policy learns to please a reward model (docs/lm-rlhf.md)."""

    policy: str | None = Field(None, description="the run or model folder PPO starts from (also the frozen reference)")
    reward: str | None = Field(None, description="a reward run (`modelcycle lm reward`) or its package")
    iterations: int = Field(50, ge=1, description="rollout + update rounds")
    rollout_batch: int = Field(16, ge=1, description="prompts answered per iteration")
    minibatch: int = Field(8, ge=1, description="responses per optimizer step")
    update_epochs: int = Field(4, ge=1, description="passes over each rollout batch")
    max_new_tokens: int = Field(48, ge=1, description="new tokens per rollout response")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of rollouts")
    whiten_scores: bool = Field(False, description="reward-model scores to zero mean, unit std over each rollout batch")
    kl_coef: float = Field(0.05, ge=0, description="the start value of the per-token KL penalty's coefficient")
    kl_target: float | None = Field(
        6.0, gt=0, description="nats per response the adaptive coefficient aims at; None: fixed"
    )
    kl_horizon: int = Field(10000, ge=1, description="how slowly the adaptive coefficient moves")
    gamma: float = Field(1.0, ge=0, le=1, description="discount factor over a response's tokens")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's lambda")
    clip: float = Field(0.2, gt=0, description="policy ratio clip")
    value_clip: float = Field(0.2, gt=0, description="value-function clip range")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    checkpoint_every: int = Field(10, ge=1, description="iterations between checkpoints")
