"""A tiny random BERT classifier for the compression and distillation tests."""

from __future__ import annotations

import torch
import transformers


def tiny_bert(
    seed: int = 0,
    *,
    width: int = 16,
    layers: int = 2,
    heads: int = 4,
    vocab: int = 50,
    positions: int = 32,
) -> transformers.BertForSequenceClassification:
    """A BERT with two labels, no dropout and seeded weights, in eval mode."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=24,
        max_position_embeddings=positions,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config).eval()
