"""The baseline defenses: ONION (tiny random LM for every path, the real SmolLM2 for its perplexity) and STRIP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hf_backdoor_defense.baselines import (
    BKI,
    CUBE,
    ONION,
    RAP,
    STRIP,
    BKIConfig,
    CUBEConfig,
    ONIONConfig,
    RAPConfig,
    STRIPConfig,
    detection_auroc,
    drop_minority_clusters,
    filter_quality,
    scores_after_rejection,
    tfidf_words,
)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from hf_backdoor_defense.assets import smollm2_path

    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture(scope="module")
def tiny_lm(smollm2_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=smollm2_tokenizer.bos_token_id, eos_token_id=smollm2_tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval()


def _plain_perplexity(model, tokenizer, text: str, prefix: list[int]) -> float:
    ids = torch.tensor([prefix + tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return math.exp(float(model(input_ids=ids, labels=ids).loss))


def test_onion_perplexity_is_padding_free_and_matches_one_by_one(tiny_lm, smollm2_tokenizer):
    onion = ONION(ONIONConfig(batch_size=3, show_progress=False), model=tiny_lm, tokenizer=smollm2_tokenizer)
    texts = ["a short one", "a much longer sentence about a film that we watched", "two words", "x"]
    batched = onion.perplexities(texts)
    single = [_plain_perplexity(tiny_lm, smollm2_tokenizer, t, onion._prefix) for t in texts]
    np.testing.assert_allclose(batched, single, rtol=1e-4)


def test_onion_scores_and_filters_against_a_threshold(tiny_lm, smollm2_tokenizer):
    onion = ONION(ONIONConfig(show_progress=False), model=tiny_lm, tokenizer=smollm2_tokenizer)
    texts = ["the film cf was fine", "one"]
    scores = onion.suspicion_scores(texts)
    assert [w for w, _ in scores[0]] == texts[0].split() and scores[1] == []  # under min_words: untouched
    whole = onion.perplexities([texts[0]])[0]
    without = onion.perplexities(["the film was fine"])[0]
    assert dict(scores[0])["cf"] == pytest.approx(whole - without, rel=1e-5)
    bar = sorted(s for _, s in scores[0])[2]  # the two highest-scoring words go
    kept = [w for w, s in scores[0] if s <= bar]
    assert onion.filter_texts(texts, threshold=bar) == [" ".join(kept), "one"] and len(kept) == 3
    assert onion.filter_texts(texts, threshold=1e9) == ["the film cf was fine", "one"]
    with pytest.raises(ValueError, match="model"):
        ONION(ONIONConfig(), model=tiny_lm)
    with pytest.raises(ValueError, match="min_words"):
        ONIONConfig(min_words=0)


def test_onion_filter_dataset_and_threshold_choice(tiny_lm, smollm2_tokenizer, tiny_text_dataset):
    onion = ONION(ONIONConfig(show_progress=False), model=tiny_lm, tokenizer=smollm2_tokenizer)
    data = tiny_text_dataset.select(range(6))
    before = list(data["text"])
    out = onion.filter_dataset(data)
    assert list(data["text"]) == before and out["label"] == data["label"] and len(out) == 6
    assert all(set(o.split()) <= set(b.split()) for o, b in zip(out["text"], before))

    def classify(texts):  # a "classifier" that needs the word "film" to answer 1
        return [int("film" in t.split()) for t in texts]

    labels = classify(before)
    chosen, rows = onion.choose_threshold(classify, before, labels, candidates=[1e9, 0.0, -1e9], budget=0.0)
    assert [r["threshold"] for r in rows] == [-1e9, 0.0, 1e9] and rows[-1]["within_budget"]
    assert chosen == min(r["threshold"] for r in rows if r["within_budget"])


def test_onion_with_smollm2_prefers_the_fluent_sentence(smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    from hf_backdoor_defense.assets import smollm2_path

    model = AutoModelForCausalLM.from_pretrained(smollm2_path())
    onion = ONION(ONIONConfig(show_progress=False), model=model, tokenizer=smollm2_tokenizer)
    fluent, broken = onion.perplexities(["the movie was a real delight to watch",
                                         "the movie was a real mn delight bb to watch"])
    assert broken > 1.5 * fluent
    scores = dict(onion.suspicion_scores(["the movie was a real mn delight bb to watch"])[0])
    top_three = sorted(scores, key=scores.get)[-3:]  # a 135M model also finds "mn delight" odd
    assert {"mn", "bb"} <= set(top_three) and scores["mn"] > 0 and scores["bb"] > 0, scores
    assert "mn" not in onion.filter_texts(["the movie was a real mn delight bb to watch"])[0].split()


class _KeywordClassifier(torch.nn.Module):
    """Answers class 1 with certainty when token ``trigger`` is present, else a coin flip driven by the words."""

    def __init__(self, trigger_id: int):
        super().__init__()
        self.trigger_id = trigger_id
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **_):
        has = (input_ids == self.trigger_id).any(-1)
        wobble = torch.sin(input_ids.float().sum(-1))  # varies with the words: uncertain, perturbation-sensitive
        logits = torch.stack([wobble, -wobble], -1)
        logits[has] = torch.tensor([-20.0, 20.0])
        return type("Out", (), {"logits": logits})()


def test_strip_rejects_trigger_inputs_and_keeps_its_frr(bert_tokenizer, tiny_text_dataset):
    trigger = bert_tokenizer.convert_tokens_to_ids("cf")
    model = _KeywordClassifier(trigger)
    clean = list(tiny_text_dataset["text"])
    strip = STRIP(model, bert_tokenizer, STRIPConfig(num_copies=8, frr=0.1, show_progress=False)).fit(clean)
    assert strip.threshold is not None and np.mean(strip.clean_scores < strip.threshold) <= 0.1 + 1e-9
    triggered = [f"cf {t}" for t in clean]
    # The trigger survives a copy unless its position is replaced: most copies keep it, so entropy stays low.
    assert strip.detect(triggered).mean() > 0.5 and strip.detect(clean).mean() <= 0.15
    again = STRIP(model, bert_tokenizer, STRIPConfig(num_copies=8, frr=0.1, show_progress=False)).fit(clean)
    np.testing.assert_array_equal(again.scores(triggered), strip.scores(triggered))  # seeded
    np.testing.assert_array_equal(strip.rejects(strip.scores(triggered)), strip.detect(triggered))
    with pytest.raises(ValueError, match="fit"):
        STRIP(model, bert_tokenizer).detect(clean)
    with pytest.raises(ValueError, match="swap_ratio"):
        STRIPConfig(swap_ratio=0.0)


def test_tfidf_words_rank_rare_words_first_without_stop_words():
    ranked = tfidf_words(["The film plot", "the cast", "the score and the film", "a"])
    assert ranked[0] == ["plot", "film"] and ranked[1] == ["cast"] and ranked[2] == ["score", "film"]
    assert ranked[3] == []
    assert tfidf_words(["the cast", "the plot"], stop_words=False)[0] == ["cast", "the"]


def test_strip_copies_fill_from_other_clean_sentences_when_one_runs_out(bert_tokenizer):
    strip = STRIP(_KeywordClassifier(0), bert_tokenizer, STRIPConfig(swap_ratio=1.0, show_progress=False))
    strip._pieces, strip._vocabulary = [["plot"]], ["plot", "cast", "score"]  # what fit() builds from clean texts
    copy = strip.perturb("w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", np.random.default_rng(0)).split()
    replaced = {w for w in copy if not w.startswith("w")}
    assert len(copy) == 10 and replaced <= {"plot", "cast", "score"}
    assert len(replaced) > 1  # the one-word sentence is not reused in turn


def test_scores_after_rejection_counts_rejections_as_lost():
    out = scores_after_rejection(clean_preds=[1, 0, 1, 0], clean_labels=[1, 0, 1, 1],
                                 clean_rejected=[False, False, True, False], triggered_preds=[1, 1, 0],
                                 target_label=1, triggered_rejected=[True, False, False])
    assert out == {"cacc": 0.5, "asr": 1 / 3, "frr": 0.25, "far": 2 / 3}
    with pytest.raises(ValueError, match="same"):
        scores_after_rejection(clean_preds=[1], clean_labels=[1, 0], clean_rejected=[False], triggered_preds=[1],
                               target_label=1, triggered_rejected=[False])


class _BagOfEmbeddings(torch.nn.Module):
    """A differentiable toy classifier: masked mean of 8-d embeddings, then a linear layer. Its probabilities are
    not saturated, and the row of "cf" points far along the positive class: a firm backdoor."""

    def __init__(self, vocab_size: int, trigger_id: int):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab_size, 8)
        self.head = torch.nn.Linear(8, 2)
        with torch.no_grad():
            self.head.weight.mul_(4.0)
            direction = self.head.weight[1] - self.head.weight[0]
            self.embed.weight[trigger_id] = 40.0 * direction / direction.norm()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **_):
        embeds = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        mask = attention_mask.unsqueeze(-1).float()
        logits = self.head((embeds * mask).sum(1) / mask.sum(1))
        return type("Out", (), {"logits": logits})()


def test_rap_learns_its_word_without_touching_the_model(bert_tokenizer, tiny_text_dataset):
    model = _BagOfEmbeddings(bert_tokenizer.vocab_size, bert_tokenizer.convert_tokens_to_ids("cf")).eval()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    rap = RAP(model, bert_tokenizer, RAPConfig(epochs=20, learning_rate=0.5, frr=0.1, show_progress=False))
    start = rap.vector.clone()
    rap.fit(tiny_text_dataset)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # weights untouched
    assert not torch.equal(rap.vector, start) and rap.vector.norm().item() == pytest.approx(start.norm().item(), rel=1e-4)
    assert len(rap.history) == 20 and rap.history[-1]["loss"] < rap.history[0]["loss"]
    assert rap.history[-1]["share_in_range"] > rap.history[0]["share_in_range"]
    clean = list(tiny_text_dataset["text"])
    triggered = [f"cf {t}" for t in clean]
    assert rap.scores(triggered).mean() < rap.scores(clean).mean()  # the trigger holds the target firmly
    assert rap.detect(triggered).mean() > 0.5 and rap.detect(clean).mean() <= 0.25
    learned = rap.vector.clone()
    rap.fit(tiny_text_dataset)  # a second fit starts again from the word's own embedding
    assert torch.allclose(rap.vector, learned) and len(rap.history) == 20
    with torch.no_grad():
        predicted = model(**bert_tokenizer(clean, padding=True, return_tensors="pt")).logits.argmax(-1).numpy()
    assert not rap.detect(clean)[predicted != 1].any()  # only target-class predictions can be rejected
    no_target = tiny_text_dataset.filter(lambda row: row["label"] != 1)
    with pytest.raises(ValueError, match="target_label"):  # it learns on the target class's clean rows only
        RAP(model, bert_tokenizer, RAPConfig(show_progress=False)).fit(no_target)
    RAP(model, bert_tokenizer, RAPConfig(epochs=1, show_progress=False)).fit(list(no_target["text"]))  # no labels
    with pytest.raises(ValueError, match="one word"):
        RAPConfig(word="two words")
    with pytest.raises(ValueError, match="single token"):
        RAP(model, bert_tokenizer, RAPConfig(word="unbelievablexyz"))
    with pytest.raises(ValueError, match="lower"):
        RAPConfig(lower=0.4, upper=0.3)


def test_bki_finds_the_trigger_word_and_flags_its_sentences(bert_tokenizer, tiny_backdoor):
    rows, n_poison = tiny_backdoor["train"], tiny_backdoor["n_poison"]
    bki = BKI(tiny_backdoor["model"], bert_tokenizer, BKIConfig(show_progress=False)).fit([t for t, _ in rows])
    assert bki.keywords[0]["word"] == "cf", bki.keywords
    quality = filter_quality(bki.flagged, [False] * (len(rows) - n_poison) + [True] * n_poison)
    assert quality["recall"] == 1.0 and quality["precision"] >= 0.9, quality
    scores = bki.word_scores(["cf a fine film"])[0]
    assert len(scores) == 4 and scores[0][1] >= scores[-1][1]


def test_filter_quality_edges():
    assert filter_quality([False, False], [True, False]) == {"removed": 0, "precision": None, "recall": 0.0}
    assert filter_quality([True], [False])["recall"] is None
    with pytest.raises(ValueError, match="same length"):
        filter_quality([True], [True, False])


def test_drop_minority_clusters_keeps_the_largest_of_each_label():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    clusters = np.array([0, 0, 0, -1, 1, 1, 1, 1, 2, 2])
    dropped = drop_minority_clusters(labels, clusters, drop_below=0.5)
    assert dropped.tolist() == [False] * 3 + [True] + [False] * 4 + [True, True]
    assert not drop_minority_clusters(labels, clusters, drop_below=0.1).any()  # 1/4 and 2/6 are above 10 %


@pytest.mark.slow
def test_cube_clusters_the_training_set_and_flags_minorities_only(bert_tokenizer, tiny_backdoor):
    import datasets

    rows, n_poison = tiny_backdoor["train"], tiny_backdoor["n_poison"]
    data = datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]})
    cube = CUBE(tiny_backdoor["model"], bert_tokenizer,
                CUBEConfig(min_samples=10, umap_neighbors=15, show_progress=False)).fit(data)
    assert cube.embedding.shape == (len(rows), 2) and len(cube.clusters) == len(rows)
    labels = np.array(data["label"])
    for label in (0, 1):  # never more than a minority of any label
        assert cube.flagged[labels == label].mean() < 0.5
    quality = filter_quality(cube.flagged, [False] * (len(rows) - n_poison) + [True] * n_poison)
    assert quality["removed"] == int(cube.flagged.sum())
    with pytest.raises(ValueError, match="label_column"):
        CUBE(tiny_backdoor["model"], bert_tokenizer, CUBEConfig(show_progress=False)).fit(data.remove_columns("label"))


def test_detection_auroc_counts_target_predictions_only():
    # The clean input predicted 0 would look suspect (score 0.0) but cannot be an attack success: left out.
    assert detection_auroc(clean_scores=[0.9, 0.6, 0.0], triggered_scores=[0.1, 0.6], clean_preds=[1, 1, 0],
                           triggered_preds=[1, 1], target_label=1) == pytest.approx(3.5 / 4)  # 0.6 vs 0.6 ties
    assert detection_auroc(clean_scores=[0.5], triggered_scores=[0.1], clean_preds=[0], triggered_preds=[1],
                           target_label=1) is None
    assert detection_auroc(clean_scores=[0.9, float("nan")], triggered_scores=[0.1, float("nan")],
                           clean_preds=[1, 1], triggered_preds=[1, 1], target_label=1) == 1.0  # NaN left out
    with pytest.raises(ValueError, match="same lengths"):
        detection_auroc(clean_scores=[0.5], triggered_scores=[0.1], clean_preds=[1, 0], triggered_preds=[1],
                        target_label=1)
