"""Shared test fixtures: tiny offline models and helpers every stage's tests use."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# Tests never reach the hub: make hub ids fail at once instead of after a minute of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{'tiny-llama', 'tiny-qwen2', 'tiny-verifier', 'tiny-value'} -> model folder."""
    from tools.tiny_models import build_tiny_models

    return build_tiny_models(str(tmp_path_factory.mktemp("tiny_models")))


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT
