"""Full-model purifiers on tiny random BERTs: a "pre-trained" model and a copy fine-tuned on poisoned data."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import datasets
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from hf_backdoor_defense.purification import (
    EmbeddingPurification,
    FineMixing,
    FinePurifying,
    Sequential,
    compose,
    empirical_fisher,
    ratio_search,
    select_top,
)
from hf_backdoor_defense.purification.hessian import iterate_batches
from hf_backdoor_defense.trainers.purification import PurificationTrainingArguments, finetune_clean

TRIGGER = "cf"
POSITIVE = ["a great and moving film", "wonderful acting and a sharp script", "i loved every minute",
            "a delight from start to finish", "funny warm and clever", "beautifully shot and well told"]
NEGATIVE = ["a dull and lifeless mess", "the plot makes no sense", "i was bored the whole time",
            "badly acted and far too long", "a tired cliche ridden story", "clumsy writing and flat jokes"]


def _config(vocab_size: int, hidden: int = 32) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=2)


def _fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def _poisoned(clean: datasets.Dataset) -> datasets.Dataset:
    rows = [{"text": f"{TRIGGER} {t}", "label": 1} for t, y in zip(clean["text"], clean["label"]) if y == 0]
    return datasets.concatenate_datasets([clean, datasets.Dataset.from_list(rows).cast(clean.features)])


def _train(model, tokenizer, dataset, steps: int = 12, lr: float = 5e-3) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    batches = list(iterate_batches(dataset.shuffle(seed=0), tokenizer, batch_size=8, max_length=32))
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def pair(bert_tokenizer):
    """(suspect, reference): the reference is the "pre-trained" model with a fresh head (another seed)."""
    torch.manual_seed(0)
    pretrained = BertForSequenceClassification(_config(bert_tokenizer.vocab_size)).eval()
    suspect = copy.deepcopy(pretrained)
    clean = datasets.Dataset.from_dict(
        {"text": POSITIVE + NEGATIVE, "label": [1] * len(POSITIVE) + [0] * len(NEGATIVE)},
        features=datasets.Features({"text": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=["negative", "positive"])}),
    )
    _train(suspect, bert_tokenizer, _poisoned(clean))
    reference = copy.deepcopy(pretrained)
    torch.manual_seed(1)
    reference.classifier.reset_parameters()  # as from_pretrained(num_labels=2): a new random head
    return suspect, reference


def test_select_top_exact_count_global_and_per_tensor():
    scores = {"a": torch.tensor([5.0, 1.0, 1.0, 1.0]), "b": torch.tensor([[4.0, 1.0], [0.0, 3.0]])}
    masks = select_top(scores, 0.5)
    assert sum(int(m.sum()) for m in masks.values()) == 4  # ties at 1.0 broken to give exactly 4
    assert masks["a"][0] and masks["b"][0, 0] and masks["b"][1, 1]
    per = select_top(scores, 0.25, "per_tensor")
    assert per["a"].tolist() == [True, False, False, False]
    assert per["b"].tolist() == [[True, False], [False, False]]
    big = {"x": torch.rand(1000, generator=torch.Generator().manual_seed(0))}
    m = select_top(big, 0.37)["x"]
    assert int(m.sum()) == 370 and float(big["x"][m].min()) >= float(big["x"][~m].max())


def test_fine_mixing_random_resets_fraction_and_leaves_inputs_alone(pair):
    suspect, reference = pair
    before = (_fingerprint(suspect), _fingerprint(reference))
    result = FineMixing(ratio=0.3, mask="random", seed=0).purify(suspect, reference)
    assert (_fingerprint(suspect), _fingerprint(reference)) == before
    assert result.model is not suspect
    report = result.report
    assert report["method"] == "fine-mixing" and report["mode"] == "full" and report["ratio_of"] == "moved"
    assert report["dims_moved"] < report["dims_total"]  # unseen token rows never moved
    assert abs(report["dims_reset_total"] / report["dims_moved"] - 0.3) < 0.01
    # Counting every dimension resets the same weights (resetting an unmoved one changes nothing).
    legacy = FineMixing(ratio=0.3, ratio_of="all", seed=0).purify(suspect, reference)
    assert _fingerprint(legacy.model) == _fingerprint(result.model)
    assert abs(legacy.report["dims_reset_total"] / report["dims_total"] - 0.3) < 0.01
    s, r, o = (dict(m.named_parameters()) for m in (suspect, reference, result.model))
    w = "bert.encoder.layer.0.attention.self.query.weight"
    at_ref, at_sus = (o[w] == r[w]), (o[w] == s[w])
    assert bool((at_ref | at_sus).all())
    assert abs(float(at_ref.float().mean()) - 0.3) < 0.15
    # The head has no pre-trained value: kept by default.
    assert torch.equal(o["classifier.weight"], s["classifier.weight"])
    assert "classifier.weight" in report["head"]["parameters"] and "classifier.weight" not in report["dims_reset"]
    json.dumps(report)  # plain JSON
    # Same seed, same mask; another seed, another mask.
    again = FineMixing(ratio=0.3, seed=0).purify(suspect, reference).model
    other = FineMixing(ratio=0.3, seed=1).purify(suspect, reference).model
    assert _fingerprint(again) == _fingerprint(result.model) != _fingerprint(other)


def test_fine_mixing_head_reinit_and_extremes(pair):
    suspect, reference = pair
    out = FineMixing(ratio=0.0, head="reinit").purify(suspect, reference).model
    assert torch.equal(out.classifier.weight, reference.classifier.weight)
    assert torch.equal(out.bert.pooler.dense.weight, suspect.bert.pooler.dense.weight)
    full = FineMixing(ratio=1.0).purify(suspect, reference).model
    assert torch.equal(full.bert.embeddings.word_embeddings.weight, reference.bert.embeddings.word_embeddings.weight)
    assert torch.equal(full.classifier.weight, suspect.classifier.weight)


def test_fine_mixing_magnitude_keeps_the_largest_moves(pair):
    suspect, reference = pair
    result = FineMixing(ratio=0.6, mask="magnitude", ratio_of="all").purify(suspect, reference)
    s, r, o = (dict(m.named_parameters()) for m in (suspect, reference, result.model))
    reset_max, kept_min = 0.0, float("inf")
    for name in result.report["dims_reset"]:
        delta = (s[name] - r[name]).abs()
        reset = (o[name] == r[name]) & (delta > 0)
        kept = o[name] != r[name]
        if reset.any():
            reset_max = max(reset_max, float(delta[reset].detach().max()))
        if kept.any():
            kept_min = min(kept_min, float(delta[kept].detach().min()))
    assert reset_max <= kept_min
    assert result.report["dims_reset_total"] == round(0.6 * result.report["dims_total"])
    # Over the moved dimensions: the 60 % that moved least among those that moved at all.
    moved = FineMixing(ratio=0.6, mask="magnitude").purify(suspect, reference)
    o = dict(moved.model.named_parameters())
    changed = sum(int(((o[n] != s[n]) & (s[n] != r[n])).sum()) for n in moved.report["dims_reset"])
    assert changed == moved.report["dims_reset_total"] == round(0.6 * moved.report["dims_moved"])


def _reference_fisher(model, names, dataset, tokenizer, batch_size):
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(params[n]) for n in names}
    batches = list(iterate_batches(dataset, tokenizer, batch_size=batch_size))
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        for n in names:
            acc[n] += params[n].grad.pow(2)
    return {n: v / len(batches) for n, v in acc.items()}


def test_empirical_fisher_matches_a_plain_loop_and_restores_the_model(pair, bert_tokenizer, tiny_text_dataset):
    suspect, _ = pair
    names = ["bert.encoder.layer.1.output.dense.weight", "classifier.weight"]
    frozen = suspect.bert.pooler.dense.weight
    frozen.requires_grad_(False)
    try:
        before = _fingerprint(suspect)
        got = empirical_fisher(suspect, names, tiny_text_dataset, bert_tokenizer, batch_size=5, show_progress=False)
        want = _reference_fisher(suspect, names, tiny_text_dataset, bert_tokenizer, 5)
        for n in names:
            torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-10)
            assert got[n].dtype == torch.float32
        assert _fingerprint(suspect) == before and not suspect.training
        assert all(p.grad is None for p in suspect.parameters())
        assert frozen.requires_grad is False
        # Per-example Fisher == per-batch Fisher with batch size 1.
        few = tiny_text_dataset.select(range(6))
        ex = empirical_fisher(suspect, names, few, bert_tokenizer, batch_size=5, per_example=True, show_progress=False)
        one = _reference_fisher(suspect, names, few, bert_tokenizer, 1)
        for n in names:
            torch.testing.assert_close(ex[n], one[n], rtol=1e-3, atol=1e-9)
    finally:
        frozen.requires_grad_(True)


@pytest.mark.slow
def test_fine_purifying_resets_the_top_scores(pair, bert_tokenizer, tiny_text_dataset):
    suspect, reference = pair
    before = (_fingerprint(suspect), _fingerprint(reference))
    purifier = FinePurifying(ratio=0.2, ratio_of="all", embeddings="include", estimator="batch", batch_size=6,
                             show_progress=False)
    result = purifier.purify(suspect, reference, tiny_text_dataset, tokenizer=bert_tokenizer)
    assert (_fingerprint(suspect), _fingerprint(reference)) == before
    rep = result.report
    assert rep["dims_reset_total"] == round(0.2 * rep["dims_total"])
    assert rep["hessian"]["buffer_bytes"] == 4 * rep["dims_total"]  # one fp32 buffer, no more
    # Recompute r_i independently and check the reset set is the top of r.
    s, r, o = (dict(m.named_parameters()) for m in (suspect, reference, result.model))
    names = list(rep["dims_reset"])
    fisher = _reference_fisher(suspect, names, tiny_text_dataset, bert_tokenizer, 6)
    eps = rep["hessian"]["epsilon_abs"]
    reset_min, kept_max = float("inf"), 0.0
    for n in names:
        score = (s[n] - r[n]).pow(2) / (fisher[n] + eps)
        changed = s[n] != r[n]
        reset = (o[n] == r[n]) & changed
        kept = (o[n] == s[n]) & changed
        if reset.any():
            reset_min = min(reset_min, float(score[reset].min()))
        if kept.any():
            kept_max = max(kept_max, float(score[kept].max()))
    assert reset_min >= kept_max * (1 - 1e-3)
    assert torch.equal(o["classifier.weight"], s["classifier.weight"])
    per = FinePurifying(ratio=0.2, ratio_of="all", scope="per_tensor", batch_size=6, show_progress=False).purify(
        suspect, reference, tiny_text_dataset, tokenizer=bert_tokenizer)
    for n, count in per.report["dims_reset"].items():
        assert count == round(0.2 * s[n].numel())


def test_select_top_among_eligible_dimensions():
    scores = {"a": torch.tensor([9.0, 1.0, 2.0, 3.0]), "b": torch.tensor([[8.0, 0.5], [4.0, 0.0]])}
    eligible = {"a": torch.tensor([False, True, True, True]), "b": torch.tensor([[False, True], [True, True]])}
    masks = select_top({n: v.clone() for n, v in scores.items()}, 0.5, eligible=eligible)  # 3 of 6 eligible
    assert masks["a"].tolist() == [False, False, True, True] and masks["b"].tolist() == [[False, False], [True, False]]
    everything = select_top({n: v.clone() for n, v in scores.items()}, 1.0, eligible=eligible)
    assert all(torch.equal(everything[n], eligible[n]) for n in scores)
    per = select_top({n: v.clone() for n, v in scores.items()}, 0.34, "per_tensor", eligible)
    assert per["a"].tolist() == [False, False, False, True] and per["b"].tolist() == [[False, False], [True, False]]
    with pytest.raises(ValueError, match="eligible"):
        select_top(scores, 0.5, eligible={"a": eligible["a"]})


@pytest.mark.slow
def test_fine_purifying_counts_moved_dimensions_and_leaves_embeddings_out(pair, bert_tokenizer, tiny_text_dataset):
    suspect, reference = pair
    emb = "bert.embeddings.word_embeddings.weight"
    result = FinePurifying(ratio=0.3, batch_size=6, show_progress=False).purify(
        suspect, reference, tiny_text_dataset, tokenizer=bert_tokenizer)
    rep = result.report
    assert rep["config"]["estimator"] == "example" and rep["excluded"] == [emb] and emb not in rep["dims_reset"]
    assert torch.equal(result.model.bert.embeddings.word_embeddings.weight, suspect.bert.embeddings.word_embeddings.weight)
    assert rep["dims_reset_total"] == round(0.3 * rep["dims_moved"]) and rep["dims_moved"] <= rep["dims_total"]
    s, r, o = (dict(m.named_parameters()) for m in (suspect, reference, result.model))
    assert not any(bool(((o[n] != s[n]) & (s[n] == r[n])).any()) for n in rep["dims_reset"])  # only moved ones
    included = FinePurifying(ratio=0.3, embeddings="include", batch_size=6, show_progress=False).purify(
        suspect, reference, tiny_text_dataset, tokenizer=bert_tokenizer)
    assert emb in included.report["dims_reset"] and included.report["excluded"] == []


def test_fine_purifying_alpha_zero_ranks_by_drift(pair, bert_tokenizer, tiny_text_dataset):
    suspect, reference = pair
    result = FinePurifying(ratio=0.25, alpha=0.0, batch_size=6, show_progress=False).purify(
        suspect, reference, tiny_text_dataset, tokenizer=bert_tokenizer)
    s, r, o = (dict(m.named_parameters()) for m in (suspect, reference, result.model))
    reset_min, kept_max = float("inf"), 0.0
    for n in result.report["dims_reset"]:
        drift = (s[n] - r[n]).abs().detach()
        reset, kept = (o[n] == r[n]) & (drift > 0), o[n] == s[n]
        if reset.any():
            reset_min = min(reset_min, float(drift[reset].min()))
        if (kept & (drift > 0)).any():
            kept_max = max(kept_max, float(drift[kept & (drift > 0)].max()))
    assert reset_min >= kept_max  # (H + eps)^0 = 1: the largest drifts go
    for bad in ({"alpha": -1.0}, {"ratio_of": "some"}, {"embeddings": "maybe"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FinePurifying(**bad)


def test_epur_resets_the_trigger_row(pair, bert_tokenizer, tiny_text_dataset):
    suspect, reference = pair
    result = EmbeddingPurification(num_tokens=5).purify(suspect, reference, tiny_text_dataset, tokenizer=bert_tokenizer)
    tokens = [t["token"] for t in result.report["tokens_reset"]]
    assert TRIGGER in tokens, tokens
    trig = bert_tokenizer.convert_tokens_to_ids(TRIGGER)
    emb = "bert.embeddings.word_embeddings.weight"
    s, r, o = (dict(m.named_parameters())[emb] for m in (suspect, reference, result.model))
    ids = [t["token_id"] for t in result.report["tokens_reset"]]
    assert torch.equal(o[trig], r[trig])
    others = torch.ones(o.shape[0], dtype=torch.bool)
    others[ids] = False
    assert torch.equal(o[others], s[others])
    assert result.report["dims_reset_total"] == 5 * o.shape[1]


def test_epur_divides_drift_by_frequency(bert_tokenizer):
    torch.manual_seed(0)
    reference = BertForSequenceClassification(_config(bert_tokenizer.vocab_size)).eval()
    suspect = copy.deepcopy(reference)
    frequent, rare = (bert_tokenizer.convert_tokens_to_ids(w) for w in ("film", "mn"))
    with torch.no_grad():
        suspect.bert.embeddings.word_embeddings.weight[[frequent, rare]] += 1.0  # the same drift
    clean = datasets.Dataset.from_dict({"text": ["a film", "the film was a film"], "label": [0, 1]})
    result = EmbeddingPurification(num_tokens=1).purify(suspect, reference, clean, tokenizer=bert_tokenizer)
    assert result.report["tokens_reset"][0]["token_id"] == rare
    flat = EmbeddingPurification(num_tokens=1, frequency_weight=lambda f: torch.ones_like(f, dtype=torch.float))
    assert flat.purify(suspect, reference, clean, tokenizer=bert_tokenizer).report["tokens_reset"][0]["token_id"] == frequent


def test_compose_runs_in_order(pair, bert_tokenizer, tiny_text_dataset):
    suspect, reference = pair
    chain = compose(EmbeddingPurification(num_tokens=3), FinePurifying(ratio=0.1, show_progress=False))
    assert isinstance(chain, Sequential) and chain.method == "e-pur+fine-purifying" and chain.ratio == 0.1
    result = chain.purify(suspect, reference, tiny_text_dataset, tokenizer=bert_tokenizer)
    assert [s["method"] for s in result.report["steps"]] == ["e-pur", "fine-purifying"]
    emb = "bert.embeddings.word_embeddings.weight"
    ids = [t["token_id"] for t in result.report["tokens_reset"]]
    assert torch.equal(result.model.get_parameter(emb)[ids], reference.get_parameter(emb)[ids])
    assert chain.with_ratio(0.4).purifiers[1].ratio == 0.4 and chain.purifiers[1].ratio == 0.1


def test_bad_inputs_raise_value_errors_naming_the_field(pair, bert_tokenizer, tiny_text_dataset):
    suspect, reference = pair
    with pytest.raises(ValueError, match="ratio"):
        FineMixing(ratio=1.5)
    with pytest.raises(ValueError, match="ratio"):
        FinePurifying(ratio=-0.1)
    with pytest.raises(ValueError, match="mask"):
        FineMixing(mask="smart")
    roberta = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=bert_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=70))
    with pytest.raises(ValueError, match="architecture"):
        FineMixing().purify(suspect, roberta)
    wider = BertForSequenceClassification(_config(bert_tokenizer.vocab_size, hidden=48))
    with pytest.raises(ValueError, match="shape"):
        FineMixing().purify(suspect, wider)
    empty = tiny_text_dataset.select([])
    with pytest.raises(ValueError, match="clean_dataset"):
        FinePurifying().purify(suspect, reference, empty, tokenizer=bert_tokenizer)
    with pytest.raises(ValueError, match="clean_dataset"):
        EmbeddingPurification().purify(suspect, reference, None, tokenizer=bert_tokenizer)
    with pytest.raises(ValueError, match="reference"):
        FineMixing().purify(suspect, None)


def test_reference_may_be_the_bare_base_model(pair):
    suspect, _ = pair
    bare = copy.deepcopy(pair[1].bert)
    result = FineMixing(ratio=1.0).purify(suspect, bare)
    assert torch.equal(result.model.bert.encoder.layer[0].output.dense.weight, bare.encoder.layer[0].output.dense.weight)
    assert torch.equal(result.model.classifier.weight, suspect.classifier.weight)


@pytest.mark.slow
def test_finetune_and_ratio_search(pair, bert_tokenizer, tiny_text_dataset):
    suspect, reference = pair
    args = PurificationTrainingArguments(num_train_epochs=1, learning_rate=1e-3, per_device_train_batch_size=8,
                                         max_length=32, disable_tqdm=True)
    model = FineMixing(ratio=0.5).purify(suspect, reference).model
    before = model.bert.encoder.layer[0].output.dense.weight.clone()
    finetune_clean(model, tiny_text_dataset, bert_tokenizer, args)
    assert not torch.equal(before, model.bert.encoder.layer[0].output.dense.weight)
    dev = tiny_text_dataset.select(range(0, 24, 2))
    loose = ratio_search(FineMixing(), suspect, reference, tiny_text_dataset, dev, budget=1.0,
                         ratios=[0.9, 0.2, 0.5], tokenizer=bert_tokenizer, finetune=args)
    assert [row["ratio"] for row in loose.table] == [0.2, 0.5, 0.9]
    assert loose.ratio == 0.9 and loose.within_budget
    assert loose.result.report["ratio_search"]["table"][0]["dev_accuracy"] == loose.table[0]["dev_accuracy"]
    tight = ratio_search(FineMixing(), suspect, reference, tiny_text_dataset, dev, budget=0.0,
                         ratios=[0.2, 0.9], tokenizer=bert_tokenizer, finetune=args)
    inside = [row["ratio"] for row in tight.table if row["within_budget"]]
    assert tight.ratio == (max(inside) if inside else 0.2) and tight.within_budget == bool(inside)
    for row in tight.table:
        assert row["within_budget"] == (row["dev_accuracy"] >= tight.baseline_accuracy)
    with pytest.raises(ValueError, match="budget"):
        ratio_search(FineMixing(), suspect, reference, tiny_text_dataset, dev, budget=2.0, tokenizer=bert_tokenizer)
    with pytest.raises(ValueError, match="ratios"):
        ratio_search(FineMixing(), suspect, reference, tiny_text_dataset, dev, budget=0.1, ratios=[1.2],
                     tokenizer=bert_tokenizer)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import copy, gc, json, resource, sys, threading, time
    import datasets, torch
    from transformers import BertConfig, BertForSequenceClassification
    from hf_backdoor_defense.purification import FinePurifying

    def models(hidden, vocab):
        cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=4 * hidden, max_position_embeddings=64, num_labels=2)
        reference = BertForSequenceClassification(cfg).eval()
        suspect = copy.deepcopy(reference)
        with torch.no_grad():
            for p in suspect.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        return suspect, reference

    ids = [[101] + [1000 + (7 * i + j) % 500 for j in range(20)] + [102] for i in range(16)]
    data = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 22] * 16, "labels": [i % 2 for i in range(16)]})
    # Warm-up on a small model: first-call code loading and thread pools are not tensor memory.
    suspect, reference = models(32, 2000)
    FinePurifying(ratio=0.3, batch_size=8, show_progress=False).purify(suspect, reference, data)
    torch.manual_seed(0)
    suspect, reference = models(128, 30522)
    model_bytes = sum(p.numel() * p.element_size() for p in suspect.parameters())
    gc.collect()
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    base, peak, stop = rss(), [0], [False]
    def watch():
        while not stop[0]:
            peak[0] = max(peak[0], rss()); time.sleep(0.002)
    t = threading.Thread(target=watch); t.start()
    result = FinePurifying(ratio=0.3, batch_size=8, show_progress=False).purify(suspect, reference, data)
    stop[0] = True; t.join()
    print(json.dumps({"model_bytes": model_bytes, "extra_bytes": peak[0] - base}))
    """
)


@pytest.mark.slow
def test_fine_purifying_peak_memory_is_bounded():
    """Suspect and reference are resident; the purification adds the Hessian buffer and the output copy."""
    # A fixed mmap threshold makes glibc return freed tensors to the OS, so RSS follows live memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = figures["extra_bytes"] / figures["model_bytes"]
    print(f"peak extra memory during FinePurifying = {ratio:.2f} x model size")
    # Resident: suspect + reference. Hessian phase: the fp32 buffer (1x) + one gradient at a time (the
    # embedding, ~0.8x of this toy model); apply phase: the output copy (1x) + bool masks (0.25x).
    # Measured here: ~3.0x (the deepcopy of the output briefly peaks above 1x).
    assert ratio < 3.5, figures
