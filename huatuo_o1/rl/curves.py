"""rl_curves.png: the training reward, format rate and KL to the reference per update, from a run's log.

RL_stage2.py draws it beside the log at the end of every run (PPO: rl_log.jsonl; RLOO / GRPO:
rl_trl_log.json), so a run on any hardware leaves its picture.
"""

import os

from huatuo_o1.records import read_json

# per log: the file, and the keys it logs the reward (trl: under the --reward_mode's name), the format rate and the KL
LOGS = {
    "ppo": ("rl_log.jsonl", ("objective/score",), "objective/format_rate", "objective/kl"),
    "trl": (
        "rl_trl_log.json",
        ("rewards/verifier/mean", "rewards/rule/mean", "rewards/hybrid/mean"),
        "rewards/format_ok/mean",
        "kl",
    ),
}


def curve_series(output_dir: str, algorithm: str) -> dict | None:
    """{"reward", "format_rate", "kl": one value per logged update (None where not logged)}, or None without a log."""
    log_name, reward_keys, format_key, kl_key = LOGS["ppo" if algorithm == "ppo" else "trl"]
    path = os.path.join(output_dir, log_name)
    if not os.path.exists(path):
        return None
    records = read_json(path)
    reward_key = next((key for key in reward_keys if any(key in r for r in records)), None)
    records = [r for r in records if reward_key in r]
    if not records:
        return None
    return {
        "reward": [r[reward_key] for r in records],
        "format_rate": [r.get(format_key) for r in records],
        "kl": [r.get(kl_key) for r in records],
    }


def write_curves(output_dir: str, algorithm: str) -> str | None:
    """Draws rl_curves.png in output_dir from the run's log; returns its path (None when nothing was logged)."""
    series = curve_series(output_dir, algorithm)
    if series is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = "update" if algorithm == "ppo" else "optimizer step"
    x = list(range(1, len(series["reward"]) + 1))
    nan = float("nan")
    fig, (ax_reward, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_reward.plot(x, series["reward"], marker=".", label="mean reward (sampled responses)")
    ax_reward.plot(x, [nan if v is None else v for v in series["format_rate"]], marker=".", label="format rate")
    ax_reward.set(xlabel=step, ylim=(-0.05, 1.05), title="training reward")
    ax_reward.legend(fontsize=8)
    # PPO logs the KL summed over a response's tokens; trl its mean per token
    ax_kl.plot(x, [nan if v is None else v for v in series["kl"]], marker=".", color="tab:red")
    ax_kl.set(xlabel=step, title="KL to the reference " + ("(per response)" if algorithm == "ppo" else "(per token)"))
    for ax in (ax_reward, ax_kl):
        ax.grid(alpha=0.3)
    fig.suptitle(f"RL_stage2.py --rl_algorithm {algorithm}: {output_dir}", fontsize=8)
    fig.tight_layout()
    path = os.path.join(output_dir, "rl_curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
