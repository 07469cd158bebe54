import json

import datasets
import pytest

from hf_backdoor_defense.data import load_text_classification, mail_body_text, tokenize_dataset


def _write_csv(path, rows, header=("review", "stars")):
    lines = [",".join(header)] + [f'"{t}",{y}' for t, y in rows]
    path.write_text("\n".join(lines) + "\n")


ROWS = [(f"sample review number {i} {'good' if i % 2 else 'bad'}", "pos" if i % 2 else "neg") for i in range(60)]


def test_local_csv_with_column_mapping_and_string_labels(tmp_path):
    f = tmp_path / "reviews.csv"
    _write_csv(f, ROWS)
    dd = load_text_classification(f, text_column="review", label_column="stars")
    assert set(dd) == {"train", "validation", "test"}
    assert dd["train"].features["label"].names == ["neg", "pos"]
    assert sum(len(s) for s in dd.values()) == 60
    assert len(dd["test"]) == 6 and len(dd["validation"]) == 6
    row = dd["train"][0]
    assert row["text"].startswith("sample review") and row["label"] == (1 if "good" in row["text"] else 0)
    # fixed seed: the same split twice, a different one for another seed
    again = load_text_classification(f, text_column="review", label_column="stars")
    assert dd["test"]["text"] == again["test"]["text"]
    other = load_text_classification(f, text_column="review", label_column="stars", split_seed=7)
    assert dd["test"]["text"] != other["test"]["text"]


def test_local_folder_jsonl_keeps_given_splits(tmp_path):
    for split, n in (("train", 40), ("dev", 8), ("test", 10)):
        with open(tmp_path / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"text": f"{split} text {i}", "label": i % 3}) + "\n")
    dd = load_text_classification(tmp_path)
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (40, 8, 10)
    assert dd["train"].features["label"].names == ["0", "1", "2"]


def test_parquet_file_and_label_names(tmp_path):
    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(30)], "label": [i % 2 for i in range(30)]})
    ds.to_parquet(str(tmp_path / "d.parquet"))
    dd = load_text_classification(tmp_path / "d.parquet", label_names=["ham", "spam"])
    assert dd["test"].features["label"].names == ["ham", "spam"]


def test_glue_style_unlabelled_test_is_replaced(tmp_path):
    for split, n, lab in (("train", 50, None), ("validation", 10, None), ("test", 10, -1)):
        with open(tmp_path / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"sentence": f"{split} {i}", "label": lab if lab is not None else i % 2}) + "\n")
    dd = load_text_classification(tmp_path)  # GLUE's `sentence` column is found without text_column=
    assert dd["test"]["text"][0].startswith("validation")  # the labelled validation became the test split
    assert len(dd["test"]) == 10 and len(dd["train"]) + len(dd["validation"]) == 50


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text_column": "body"}, "text_column="),
        ({"label_column": "y"}, "label_column="),
        ({"label_names": ["only"]}, "label_names"),
        ({"validation_size": 0.9}, "validation_size"),
    ],
)
def test_bad_input_names_the_field(tmp_path, kwargs, message):
    f = tmp_path / "d.csv"
    _write_csv(f, [(f"text {i}", i % 2) for i in range(20)], header=("text", "label"))
    with pytest.raises(ValueError, match=message):
        load_text_classification(f, **kwargs)


def test_labels_outside_names_and_empty_split(tmp_path):
    f = tmp_path / "d.csv"
    _write_csv(f, [(f"text {i}", i % 3) for i in range(20)], header=("text", "label"))
    with pytest.raises(ValueError, match="outside"):
        load_text_classification(f, label_names=["a", "b"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.csv").write_text("text,label\n")
    with pytest.raises(ValueError, match="empty"):
        load_text_classification(tmp_path / "empty")


def test_unknown_name_offline_gives_clear_error():
    with pytest.raises(ValueError, match="neither a built-in corpus"):
        load_text_classification("no-such-user/no-such-dataset-xyz")


def test_collection_only_for_spamassassin(tmp_path):
    with pytest.raises(ValueError, match="collection"):
        load_text_classification("rotten_tomatoes", collection=1)


def test_rotten_tomatoes_builtin():
    dd = load_text_classification("rotten_tomatoes")
    sizes = {k: len(v) for k, v in dd.items()}
    assert sizes == {"train": 10200, "validation": 1276, "test": 1276}
    assert dd["train"].features["label"].names == ["negative", "positive"]
    assert not set(dd["train"]["text"]) & set(dd["test"]["text"])  # de-duplicated, disjoint


def test_spamassassin_builtin_collections():
    one = load_text_classification("spamassassin", collection=1)
    two = load_text_classification("spamassassin", collection=2)
    assert set(one["train"]["collection"]) == {1} and set(two["train"]["collection"]) == {2}
    total = sum(len(s) for s in one.values()) + sum(len(s) for s in two.values())
    assert 5600 <= total <= 5800  # 6,046 mails, minus empty bodies and repeated ones
    texts = [t for dd in (one, two) for split in dd.values() for t in split["text"]]
    assert len(texts) == len(set(texts))  # no mail body twice, so no test mail is also a training mail
    assert one["train"].features["label"].names == ["ham", "spam"]
    assert all(len(t) <= 4000 and "<html" not in t.lower() for t in one["test"]["text"])


def test_mail_body_text_strips_html():
    raw = ("From: a@b.c\nSubject: hi\nContent-Type: text/html; charset=us-ascii\n\n"
           "<html><style>p{}</style><body><p>Buy   <b>now</b></p></body></html>\n")
    assert mail_body_text(raw) == "Buy now"
    assert mail_body_text("From: a@b.c\nContent-Type: image/png\n\nxx") == ""


def test_tokenize_dataset_keeps_columns(tiny_text_dataset, bert_tokenizer):
    ds = tiny_text_dataset.add_column("is_poisoned", [False] * len(tiny_text_dataset))
    enc = tokenize_dataset(ds, bert_tokenizer, max_length=8)
    assert {"input_ids", "attention_mask", "labels", "text", "is_poisoned"} <= set(enc.column_names)
    assert max(len(x) for x in enc["input_ids"]) <= 8
    assert enc["labels"] == ds["label"]
    with pytest.raises(ValueError, match="text_column"):
        tokenize_dataset(ds, bert_tokenizer, text_column="nope")



def test_fit_to_tokens_cuts_at_whole_words(bert_tokenizer):
    from hf_backdoor_defense.data import fit_to_tokens

    texts = ["one two three four", "Subject: hi\n\nbody  text here", "  short  "]
    assert fit_to_tokens(texts, bert_tokenizer, 3) == ["one two three", "Subject: hi", "  short  "]
    assert fit_to_tokens(["supercalifragilistic word"], bert_tokenizer, 2) == ["supercal"]  # one long word
    assert fit_to_tokens([], bert_tokenizer, 3) == []
    with pytest.raises(ValueError, match="max_tokens"):
        fit_to_tokens(texts, bert_tokenizer, 0)


def test_fit_dataset_to_tokens_copies_and_checks_input(bert_tokenizer):
    from hf_backdoor_defense.data import fit_dataset_to_tokens

    original = datasets.Dataset.from_dict({"text": ["a b c d e", "f g"], "label": [0, 1]})
    cut = fit_dataset_to_tokens(original, bert_tokenizer, 3)
    assert cut["text"] == ["a b c", "f g"] and cut["label"] == [0, 1]
    assert original["text"] == ["a b c d e", "f g"]  # the input is untouched
    with pytest.raises(ValueError, match="text column 'sentence'"):
        fit_dataset_to_tokens(original, bert_tokenizer, 3, text_column="sentence")
    with pytest.raises(ValueError, match="max_tokens"):
        fit_dataset_to_tokens(original, bert_tokenizer, True)



def test_fit_to_window_leaves_room_for_special_tokens_and_the_trigger(bert_tokenizer):
    from hf_backdoor_defense.data import fit_to_window

    data = datasets.Dataset.from_dict({"text": [" ".join(["word"] * 40)], "label": [0]})
    cut = fit_to_window(data, bert_tokenizer, max_length=16, trigger_room=4)  # 16 - [CLS] - [SEP] - 4
    assert len(bert_tokenizer.tokenize(cut["text"][0])) == 10
    for bad in (13, -1, True, 2.0):
        with pytest.raises(ValueError, match="trigger_room"):
            fit_to_window(data, bert_tokenizer, max_length=16, trigger_room=bad)


@pytest.mark.parametrize("attack_name", ["badnets", "addsent"])
def test_fitted_spam_keeps_every_trigger_inside_the_model_window(bert_tokenizer, attack_name):
    """Why the matrix cuts texts: at max_length 32, most triggers in whole mails are truncated away."""
    from hf_backdoor_defense.attacks import AddSent, BadNets
    from hf_backdoor_defense.data import fit_dataset_to_tokens

    mails = load_text_classification("spamassassin")["test"].select(range(200))
    attack = BadNets(target_label=1, seed=0) if attack_name == "badnets" else AddSent(target_label=1, seed=0)
    pieces = attack.triggers if attack_name == "badnets" else [attack.sentence]
    trigger = [" ".join(bert_tokenizer.tokenize(w)) for w in pieces]

    def share_seen(test):
        triggered = attack.triggered_test_set(test)
        ids = bert_tokenizer(list(triggered["text"]), truncation=True, max_length=32)["input_ids"]
        seen = [" ".join(bert_tokenizer.convert_ids_to_tokens(row)) for row in ids]
        return sum(any(t in s for t in trigger) for s in seen) / len(seen)

    assert share_seen(fit_dataset_to_tokens(mails, bert_tokenizer, 32 - 2 - 8)) == 1.0
    assert share_seen(mails) < 0.5


def test_subsample_is_seeded_stratified_on_request_and_keeps_small_sets():
    from hf_backdoor_defense.data import subsample

    labels = datasets.ClassLabel(names=["neg", "pos"])
    data = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(40)], "label": [0] * 30 + [1] * 10},
                                      features=datasets.Features({"text": datasets.Value("string"), "label": labels}))
    first, again, other = (subsample(data, 8, seed) for seed in (0, 0, 1))
    assert first["text"] == again["text"] != other["text"] and len(first) == 8
    assert sorted(subsample(data, 8, 0, stratify=True)["label"]) == [0] * 6 + [1] * 2  # the 3:1 shares
    assert subsample(data, None, 0) is data and subsample(data, 40, 0) is data
    assert data["text"][:3] == ["t0", "t1", "t2"]  # the input is untouched
    with pytest.raises(ValueError, match=">= 1"):
        subsample(data, 0, 0)


def test_build_poisoned_splits_samples_poisons_and_names_a_missing_split(tiny_text_dataset):
    from hf_backdoor_defense.attacks import BadNets
    from hf_backdoor_defense.data.poisoned import build_poisoned_splits

    raw = datasets.DatasetDict({"train": tiny_text_dataset, "validation": tiny_text_dataset.select(range(4)),
                                "test": tiny_text_dataset})
    splits = build_poisoned_splits(raw, BadNets(poison_rate=0.5, seed=0), seed=1, train_size=12, eval_size=6)
    assert sorted(splits) == ["clean_train", "reference", "test", "train"]
    assert len(splits["train"]) == 12 and sum(splits["train"]["is_poisoned"]) == 6 and len(splits["test"]) == 6
    changed = [a != b for a, b in zip(splits["clean_train"]["text"], splits["train"]["text"])]
    assert changed == list(splits["train"]["is_poisoned"])  # the clean sample is the same rows, untouched
    assert splits["reference"] is raw["validation"] and "is_poisoned" not in raw["train"].column_names
    with pytest.raises(ValueError, match="eval_split='dev' is not a split of reviews"):
        build_poisoned_splits(raw, BadNets(), seed=0, eval_split="dev", dataset_name="reviews")


def test_model_inputs_keeps_the_forward_pass_columns_and_what_is_asked(bert_tokenizer):
    import datasets

    from hf_backdoor_defense.data import model_inputs, tokenize_dataset

    raw = datasets.Dataset.from_dict({"text": ["a fine film", "dull"], "label": [1, 0], "is_poisoned": [True, False]})
    encoded = tokenize_dataset(raw, bert_tokenizer, max_length=8)
    assert set(model_inputs(encoded).column_names) == {"input_ids", "attention_mask", "labels"}
    kept = model_inputs(encoded, keep=("is_poisoned",))
    assert set(kept.column_names) == {"input_ids", "attention_mask", "labels", "is_poisoned"}
    assert kept["is_poisoned"] == [True, False] and "text" in encoded.column_names  # the input is not modified
