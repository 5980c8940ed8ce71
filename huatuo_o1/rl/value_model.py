"""A cheaper PPO value model: a causal LM's embeddings and first blocks under a new 1-label head."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


def truncated_value_model(base: str, layers: int, output_dir: str, seed: int = 0) -> None:
    """Save to output_dir a 1-label sequence classifier (a value model for --value_model_path) made of the base
    model's embeddings, its first `layers` blocks and its final norm, with a new head (seeded), and the base's
    tokenizer."""
    config = AutoConfig.from_pretrained(base)
    config.num_hidden_layers, config.num_labels = layers, 1
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    full = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    missing, _ = model.model.load_state_dict(full.model.state_dict(), strict=False)
    if missing:
        raise ValueError(f"{base}: the truncated model lacks {missing} in the base's weights")
    model.save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(base).save_pretrained(output_dir)
