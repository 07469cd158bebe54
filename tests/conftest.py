"""Shared fixtures: nothing here reaches the Hub; tiny random models for each architecture path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import datasets  # noqa: E402
import pytest  # noqa: E402

datasets.disable_progress_bars()

POSITIVE = ["a great and moving film", "wonderful acting and a sharp script", "i loved every minute",
            "a delight from start to finish", "funny warm and clever", "beautifully shot and well told"]
NEGATIVE = ["a dull and lifeless mess", "the plot makes no sense", "i was bored the whole time",
            "badly acted and far too long", "a tired cliche ridden story", "clumsy writing and flat jokes"]


@pytest.fixture
def tiny_text_dataset() -> datasets.Dataset:
    """24 short reviews with a ClassLabel (negative=0, positive=1)."""
    texts = (POSITIVE + NEGATIVE) * 2
    labels = ([1] * len(POSITIVE) + [0] * len(NEGATIVE)) * 2
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


@pytest.fixture(scope="session")
def minilm_dir():
    from hf_backdoor_defense.assets import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def bert_tokenizer(minilm_dir):
    """The real MiniLM WordPiece tokenizer (30,522 tokens); pair it with tiny random BERTs."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture
def tiny_bert(bert_tokenizer):
    """A 2-layer random BERT classifier (hidden 32) over the MiniLM vocabulary."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128, num_labels=2)
    return BertForSequenceClassification(config)
