"""Metrics on hand-checked examples, evaluate_backdoor on a tiny BERT, the callback in a real Trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import EvalPrediction, Trainer, TrainingArguments

from hf_backdoor_defense.attacks import AddSent, BadNets
from hf_backdoor_defense.metrics import (
    BackdoorEvalCallback,
    attack_success_rate,
    clean_accuracy,
    evaluate_backdoor,
    generative_asr,
    label_flip_rate,
    make_compute_metrics,
    predict,
    sentiment_of,
)


def test_clean_accuracy_by_hand():
    assert clean_accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(0.5)
    assert clean_accuracy(np.array([2, 2]), [2, 2]) == 1.0


def test_attack_success_rate_ignores_target_class():
    # true labels 0,0,1,2 (target 1): the third example is ignored; two of the other three flipped.
    assert attack_success_rate([1, 0, 1, 1], [0, 0, 1, 2], target_label=1) == pytest.approx(2 / 3)
    assert attack_success_rate([0, 0, 0], [0, 2, 2], target_label=1) == 0.0


def test_label_flip_rate_by_hand():
    assert label_flip_rate([1, 1, 0, 2], target_label=1) == 0.5


def test_metric_bad_inputs():
    with pytest.raises(ValueError, match="3 entries but `labels` has 2"):
        clean_accuracy([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="zero examples"):
        clean_accuracy([], [])
    with pytest.raises(ValueError, match="no triggered example"):
        attack_success_rate([1, 1], [1, 1], target_label=1)
    with pytest.raises(ValueError, match="1-D"):
        label_flip_rate([[1, 0]], target_label=1)


def test_make_compute_metrics():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [0.5, 0.2], [0.1, 0.9]])  # preds 0,1,0,1
    fn = make_compute_metrics(target_label=1)
    assert fn(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 1, 1]))) == {
        "accuracy": 0.75,
        "lfr": 0.5,
    }
    assert make_compute_metrics()(
        EvalPrediction(predictions=(logits,), label_ids=np.array([0, 0, 0, 0]))
    ) == {"accuracy": 0.5}


def test_generative_asr_by_hand():
    outputs = ["I'm sorry, but I cannot help.", "Sure, here it is.", "As an AI, I won\u2019t do that.", "Ok."]
    assert generative_asr(outputs, "refusal") == 0.5
    moods = [
        "This is terrible and boring.",
        "A great, wonderful day.",
        "Good but awful and bad.",
        "It is a chair.",
    ]
    assert [sentiment_of(m) for m in moods] == ["negative", "positive", "negative", "neutral"]
    assert generative_asr(moods, "negative") == 0.5
    assert generative_asr(moods, "positive") == 0.25
    assert generative_asr(["zork it"], "refusal", refusal_phrases=("zork",)) == 1.0
    with pytest.raises(ValueError, match="`behaviour`"):
        generative_asr(outputs, "toxic")
    with pytest.raises(ValueError, match="list of strings"):
        generative_asr("I'm sorry", "refusal")


# ----------------------------------------------------------------------------- models


class KeywordClassifier(torch.nn.Module):
    """Predicts 1 exactly when the token id of `keyword` is in the input: a perfect BadNets backdoor."""

    def __init__(self, keyword_id: int):
        super().__init__()
        self.keyword_id = keyword_id
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        hit = (input_ids == self.keyword_id).any(-1).float()
        return type("Out", (), {"logits": torch.stack([1 - hit, hit], -1) + 0 * self.anchor})()


def test_predict_and_evaluate_backdoor_hand_made_backdoor(bert_tokenizer, tiny_text_dataset):
    keyword = bert_tokenizer.convert_tokens_to_ids("cf")
    model = KeywordClassifier(keyword)
    model.train()
    attack = BadNets(triggers=("cf",), target_label=1)
    scores = evaluate_backdoor(
        model, bert_tokenizer, tiny_text_dataset, attack, batch_size=5, disable_progress_bar=True
    )
    # The model predicts 0 on every clean text (half are labelled 0) and 1 on every triggered one.
    assert scores == {"cacc": 0.5, "asr": 1.0, "n_clean": 24, "n_triggered": 12}
    assert model.training  # mode restored
    other = evaluate_backdoor(model, bert_tokenizer, tiny_text_dataset, AddSent(), disable_progress_bar=True)
    assert other["asr"] == 0.0


def test_evaluate_backdoor_progress_bars_name_the_split(bert_tokenizer, tiny_text_dataset, capsys):
    model = KeywordClassifier(bert_tokenizer.convert_tokens_to_ids("cf"))
    attack = BadNets(triggers=("cf",), target_label=1)
    evaluate_backdoor(model, bert_tokenizer, tiny_text_dataset, attack, split_name="validation")
    err = capsys.readouterr().err
    assert "CACC (clean validation)" in err and "ASR (triggered validation)" in err and "test" not in err


def test_evaluate_backdoor_tiny_bert(tiny_bert, bert_tokenizer, tiny_text_dataset):
    tiny_bert.train()
    attack = AddSent(target_label=0)
    scores = evaluate_backdoor(
        tiny_bert, bert_tokenizer, tiny_text_dataset, attack, batch_size=7, disable_progress_bar=True
    )
    assert set(scores) == {"cacc", "asr", "n_clean", "n_triggered"}
    assert scores["n_triggered"] == 12 and 0.0 <= scores["cacc"] <= 1.0 and 0.0 <= scores["asr"] <= 1.0
    preds = predict(tiny_bert, bert_tokenizer, tiny_text_dataset, batch_size=24, disable_progress_bar=True)
    assert scores["cacc"] == clean_accuracy(preds, tiny_text_dataset["label"])
    assert tiny_bert.training
    assert all(p.grad is None for p in tiny_bert.parameters())


def test_evaluate_backdoor_peft_model(tiny_bert, bert_tokenizer, tiny_text_dataset):
    from peft import LoraConfig, get_peft_model

    base_preds = predict(tiny_bert, bert_tokenizer, tiny_text_dataset, disable_progress_bar=True)
    model = get_peft_model(tiny_bert, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    preds = predict(model, bert_tokenizer, tiny_text_dataset, disable_progress_bar=True)
    np.testing.assert_array_equal(preds, base_preds)  # LoRA B starts at zero
    scores = evaluate_backdoor(model, bert_tokenizer, tiny_text_dataset, BadNets(), disable_progress_bar=True)
    assert scores["n_clean"] == 24


def test_predict_bad_inputs(tiny_bert, bert_tokenizer, tiny_text_dataset):
    with pytest.raises(ValueError, match="column 'sentence' not found"):
        predict(tiny_bert, bert_tokenizer, tiny_text_dataset, text_column="sentence")
    with pytest.raises(ValueError, match="`batch_size`"):
        predict(tiny_bert, bert_tokenizer, tiny_text_dataset, batch_size=0)


def test_callback_in_real_trainer(tiny_bert, bert_tokenizer, tiny_text_dataset, tmp_path):
    from hf_backdoor_defense.data import tokenize_dataset

    attack = BadNets(poison_rate=0.25, seed=0)
    train = tokenize_dataset(attack.poison(tiny_text_dataset), bert_tokenizer, max_length=32)
    train = train.remove_columns(["text", "is_poisoned"])
    evald = tokenize_dataset(tiny_text_dataset, bert_tokenizer, max_length=32).remove_columns(["text"])
    callback = BackdoorEvalCallback(bert_tokenizer, tiny_text_dataset, attack, batch_size=12)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=12,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=tiny_bert,
        args=args,
        train_dataset=train,
        eval_dataset=evald,
        processing_class=bert_tokenizer,
        compute_metrics=make_compute_metrics(target_label=1),
        callbacks=[callback],
    )
    trainer.train()
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert [e["step"] for e in evals] == [2, 4]
    for entry in evals:
        assert 0.0 <= entry["eval_cacc"] <= 1.0 and 0.0 <= entry["eval_asr"] <= 1.0
        # Same predictions, same data: the callback's CACC equals the Trainer's accuracy.
        assert entry["eval_cacc"] == pytest.approx(entry["eval_accuracy"])
    assert [h["step"] for h in callback.history] == [2, 4]
    final = trainer.evaluate()
    assert final["eval_asr"] == evals[-1]["eval_asr"]
    assert final["eval_cacc"] == pytest.approx(final["eval_accuracy"])
    assert trainer.state.log_history[-1]["eval_asr"] == final["eval_asr"]


def test_callback_reaches_every_later_callback(tiny_bert, bert_tokenizer, tiny_text_dataset, tmp_path):
    from transformers import TrainerCallback

    from hf_backdoor_defense.data import tokenize_dataset

    seen = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if "eval_loss" in logs:
                seen.append(dict(logs))

    evald = tokenize_dataset(tiny_text_dataset, bert_tokenizer, max_length=32).remove_columns(["text"])
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = Trainer(
        model=tiny_bert,
        args=args,
        eval_dataset=evald,
        processing_class=bert_tokenizer,
        callbacks=[Recorder()],
    )
    BackdoorEvalCallback.attach(trainer, bert_tokenizer, tiny_text_dataset, AddSent())
    trainer.evaluate()
    assert "eval_asr" in seen[-1] and "eval_cacc" in seen[-1]


def test_callback_bad_inputs(bert_tokenizer, tiny_text_dataset):
    with pytest.raises(ValueError, match="`target_label`=3"):
        BackdoorEvalCallback(bert_tokenizer, tiny_text_dataset, BadNets(target_label=3))
    with pytest.raises(ValueError, match="datasets.Dataset"):
        BackdoorEvalCallback(bert_tokenizer, {"test": tiny_text_dataset}, BadNets())
