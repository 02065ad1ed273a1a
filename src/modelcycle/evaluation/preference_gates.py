"""The issue's quality gates for the preference stages (``modelcycle lm gates ... --reward --dpo
--ppo``), in the rows ``evaluation/lm.py::quality_gates`` prints for pretraining and SFT:

* the reward model ranks at least 90 % of the held-out pairs right (``evaluate_reward``);
* the DPO policy's held-out implicit-reward accuracy is at least 80 % (what its run measured on
  the held-out topics for the checkpoint it packaged, ``val_accuracy`` in the manifest);
* the DPO and PPO policies each win at least 60 % of paired answers to held-out prompts against
  the SFT policy (``samples`` answers a prompt), judged by the reward model (``compare_policies``;
  the KL to the SFT policy is shown with it).
"""

from __future__ import annotations

from pathlib import Path

from modelcycle import runs
from modelcycle.errors import UserError
from modelcycle.evaluation.policy import compare_policies, evaluate_reward

REWARD_ACCURACY, DPO_ACCURACY, WIN_RATE = 0.9, 0.8, 0.6


def preference_gates(
    sft: str | Path,
    reward: str | Path,
    dpo: str | Path | None = None,
    ppo: str | Path | None = None,
    samples: int = 4,
) -> list[dict]:
    """Gate rows (``gate``, ``value``, ``baseline``, ``passed``, and ``kl`` for the win rates)."""
    accuracy = evaluate_reward(reward)
    rows = [
        {
            "gate": f"reward model: held-out pairwise accuracy ({accuracy['num_pairs']} pairs{_kinds(accuracy)})",
            "value": accuracy["pairwise_accuracy"],
            "baseline": REWARD_ACCURACY,
            "passed": accuracy["pairwise_accuracy"] >= REWARD_ACCURACY,
        }
    ]
    if dpo is not None:
        measured = runs.read_manifest(dpo).get("metrics", {}).get("val_accuracy")
        if measured is None:
            raise UserError(f"{dpo}: its package records no val_accuracy; pass a DPO run with held-out pairs")
        rows.append(
            {
                "gate": "DPO: held-out implicit-reward accuracy",
                "value": measured,
                "baseline": DPO_ACCURACY,
                "passed": measured >= DPO_ACCURACY,
            }
        )
    for name, run in (("PPO", ppo), ("DPO", dpo)):
        if run is None:
            continue
        result = compare_policies(run, sft, reward=reward, samples=samples)
        kl = "n/a" if result["kl"] is None else f"{result['kl']:.3g}"
        rows.append(
            {
                "gate": f"{name}: win rate against SFT judged by the reward model "
                f"({result['num_prompts']} prompts x {samples} answers, KL to SFT {kl} nats)",
                "value": result["win_rate"],
                "baseline": WIN_RATE,
                "passed": result["win_rate"] >= WIN_RATE,
                "kl": result["kl"],
                "mean_reward": result["mean_reward"],
                "sft_reward": result["baseline_reward"],
            }
        )
    return rows


def _kinds(accuracy: dict) -> str:
    """'; shuffled 0.98, wrong_topic 0.61' when the pairs say their kind."""
    shown = ", ".join(f"{kind} {value:.2f}" for kind, value in accuracy["accuracy_by_kind"].items())
    return f"; {shown}" if shown else ""
