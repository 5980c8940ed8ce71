"""Our PPO for RL_stage2.py (trl 1.13+ has none): the verifier reward, the PPO math, the trainer."""
