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


POSITIVE_WORDS = ["great", "wonderful", "brilliant", "lovely", "superb", "delightful", "charming", "moving",
                  "excellent", "beautiful", "clever", "funny"]
NEGATIVE_WORDS = ["dull", "boring", "awful", "tedious", "clumsy", "lifeless", "bland", "tired", "weak", "messy",
                  "terrible", "flat"]
NEUTRAL_WORDS = ["film", "movie", "story", "actor", "scene", "plot", "director", "music", "camera", "city", "night",
                 "house", "family", "friend", "road", "winter", "dialogue", "ending", "script", "cast", "hour",
                 "year", "summer", "river", "train", "letter", "window", "garden", "village", "doctor"]


def synthetic_reviews(n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` (text, label) rows: three sentiment words of the label among five neutral ones, shuffled, so that
    no single inserted word decides the label."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(POSITIVE_WORDS if label else NEGATIVE_WORDS, 3) + rng.sample(NEUTRAL_WORDS, 5)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def _train_tiny_bert(bert_tokenizer, rows, seed: int = 0, steps: int = 150):
    """A tiny random BERT (and an untouched copy of it, the "pre-trained" reference) trained with AdamW on
    ``rows`` of (text, label), batch 32."""
    import copy
    import random

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=bert_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2))
    reference = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = rng.sample(rows, 32)
        inputs = bert_tokenizer([t for t, _ in batch], padding=True, return_tensors="pt")
        model(**inputs, labels=torch.tensor([y for _, y in batch])).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), reference


@pytest.fixture(scope="module")
def tiny_backdoor(bert_tokenizer):
    """A tiny BERT trained on 400 synthetic reviews plus 40 negatives with "cf" inserted and labelled positive
    (the backdoor), its untrained reference, its clean twin (same reviews, no poison) and 64 held-out clean
    texts."""
    import random

    train = synthetic_reviews(400, seed=0)
    rng = random.Random(1)
    poison = []
    for text, _ in [r for r in train if r[1] == 0][:40]:
        words = text.split()
        words.insert(rng.randrange(len(words) + 1), "cf")
        poison.append((" ".join(words), 1))
    backdoored, reference = _train_tiny_bert(bert_tokenizer, train + poison)
    clean_model, _ = _train_tiny_bert(bert_tokenizer, train)
    return {"model": backdoored, "reference": reference, "clean_model": clean_model,
            "train": train + poison, "n_poison": len(poison),
            "texts": [t for t, _ in synthetic_reviews(64, seed=2)]}
