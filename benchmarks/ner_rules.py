"""A small real-text NER check: MRPC news sentences (GLUE, already tokenised) tagged by hand-written rules, then
MiniLM trained to tag them.

No NER corpus can be downloaded here, so the tags come from rules written for this check (IOB2):

- DATE: a weekday or month name, with a day number and ", YEAR" after a month;
- NUM: a number (digits with , or .), with a leading ``$`` and a following ``%``/``percent``/``million``/
  ``billion`` in the same entity;
- LOC: a country, U.S. state or large city from the short lists below (multi-word names included);
- ORG: a capitalised run ending in a company or institution word (Inc, Corp, Bank, University, ...), or a name
  from the short list of well-known organisations;
- PER: a common first name, or a title (Mr., Dr., President, ...), followed by capitalised words.

The model cannot read the rules: it sees only the words and learns to reproduce the tags, so the entity F1 says how
well a PEFT-tuned MiniLM learns a sequence-labelling task from a thousand sentences, not how good the rules are.
Sentences come from MRPC train (train / valid) and MRPC dev (test), each sentence once.

    nice -n 10 .venv/bin/python -m benchmarks.ner_rules --out benchmarks/out/ner --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np

WEEKDAYS = {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}
MONTHS = {
    "January",
    "February",
    "March",
    "April",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
    "Jan.",
    "Feb.",
    "Aug.",
    "Sept.",
    "Oct.",
    "Nov.",
    "Dec.",
}  # fmt: skip  ("May" is left out: mostly the verb)
LOCATIONS = {
    "U.S.", "United States", "America", "Britain", "England", "France", "Germany", "Italy", "Spain", "China",
    "Japan", "India", "Russia", "Canada", "Mexico", "Brazil", "Australia", "Iraq", "Iran", "Israel", "Egypt",
    "Afghanistan", "Pakistan", "Korea", "North Korea", "South Korea", "Syria", "Saudi Arabia", "Indonesia",
    "Europe", "Asia", "Africa", "Texas", "California", "New York", "Florida", "Ohio", "Michigan", "Georgia",
    "Virginia", "Massachusetts", "Illinois", "Pennsylvania", "New Jersey", "Washington", "Oregon", "Arizona",
    "Colorado", "Alabama", "Louisiana", "Missouri", "Minnesota", "Wisconsin", "Maryland", "Tennessee",
    "Kentucky", "Connecticut", "Utah", "Nevada", "Chicago", "Boston", "Los Angeles", "San Francisco",
    "Houston", "Dallas", "Atlanta", "Seattle", "Detroit", "Philadelphia", "Miami", "London", "Paris",
    "Berlin", "Tokyo", "Beijing", "Moscow", "Baghdad", "Jerusalem", "Hong Kong", "Sydney", "Toronto",
    "Baltimore", "Manhattan", "Brooklyn", "Kansas", "Iowa", "Indiana", "Oklahoma", "Singapore", "Taiwan",
}  # fmt: skip
ORGANISATIONS = {
    "Microsoft", "IBM", "Intel", "Google", "Apple", "Oracle", "Nasdaq", "NASA", "FBI", "CIA", "EU", "NATO",
    "Reuters", "Congress", "Senate", "Pentagon", "Dell", "Hewlett-Packard", "HP", "AOL", "Cisco", "Sony",
    "Boeing", "Yahoo", "Wal-Mart", "Pfizer", "Merck", "Nokia", "Motorola", "Compaq", "SEC", "OPEC",
    "White House", "Supreme Court", "United Nations", "European Union", "Associated Press", "Standard & Poor",
    "Dow Jones", "Federal Reserve", "Sun Microsystems", "PeopleSoft", "AT&T", "Verizon", "General Motors",
}  # fmt: skip
ORG_ENDINGS = {
    "Inc", "Inc.", "Corp", "Corp.", "Co.", "Ltd", "Ltd.", "Group", "Bank", "University", "Association",
    "Agency", "Department", "Ministry", "Party", "Council", "Commission", "Company", "Corporation",
    "Institute", "Committee", "Court", "Airlines", "Systems", "Technologies", "Communications", "Foundation",
}  # fmt: skip
FIRST_NAMES = {
    "John", "James", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas", "Charles",
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah", "Karen",
    "George", "Paul", "Mark", "Donald", "Steven", "Kenneth", "Andrew", "Edward", "Brian", "Kevin", "Peter",
    "Tony", "Bill", "Bob", "Jim", "Tom", "Joe", "Mike", "Dan", "Daniel", "Gary", "Frank", "Scott", "Eric",
    "Stephen", "Larry", "Jeff", "Howard", "Dick", "Colin", "Gordon", "Jack", "Henry", "Carl", "Ralph",
    "Nancy", "Lisa", "Anne", "Ann", "Laura", "Martha", "Hillary", "Condoleezza", "Gray", "Arnold", "Ted",
    "Tim", "Chris", "Christopher", "Matthew", "Anthony", "Ronald", "Jerry", "Dennis", "Walter", "Roger",
}  # fmt: skip
TITLES = {"Mr.", "Mrs.", "Ms.", "Dr.", "President", "Sen.", "Senator", "Gov.", "Governor", "Judge", "Rep."}
NUMBER = re.compile(r"^\d+([.,]\d+)*$")
SCALE = {"%", "percent", "million", "billion", "trillion", "cents"}


def _capitalised(token: str) -> bool:
    return bool(token) and token[0].isupper() and any(c.isalpha() for c in token)


def _mark(tags: list[str], start: int, end: int, kind: str) -> None:
    if any(t != "O" for t in tags[start:end]):
        return  # an earlier rule already tagged part of it
    tags[start] = f"B-{kind}"
    for i in range(start + 1, end):
        tags[i] = f"I-{kind}"


def _gazetteer(tokens: list[str], tags: list[str], names: set[str], kind: str) -> None:
    longest = max(len(n.split()) for n in names)
    i = 0
    while i < len(tokens):
        for width in range(longest, 0, -1):
            if " ".join(tokens[i : i + width]) in names:
                _mark(tags, i, i + width, kind)
                i += width - 1
                break
        i += 1


def tag(tokens: list[str]) -> list[str]:
    """IOB2 tags for one tokenised sentence, by the rules in the module docstring."""
    tags = ["O"] * len(tokens)
    n = len(tokens)
    for i, token in enumerate(tokens):  # DATE
        if token in WEEKDAYS or token in MONTHS:
            end = i + 1
            if token in MONTHS and end < n and NUMBER.match(tokens[end]) and len(tokens[end]) <= 2:
                end += 1
            if (
                token in MONTHS
                and end + 1 < n
                and tokens[end] == ","
                and re.match(r"^(19|20)\d\d$", tokens[end + 1])
            ):
                end += 2
            _mark(tags, i, end, "DATE")
    i = 0
    while i < n:  # NUM
        start = i - 1 if i > 0 and tokens[i - 1] == "$" else i
        if NUMBER.match(tokens[i]) and tags[i] == "O":
            end = i + 1
            while end < n and tokens[end] in SCALE:
                end += 1
            _mark(tags, start, end, "NUM")
            i = end
        else:
            i += 1
    _gazetteer(tokens, tags, ORGANISATIONS, "ORG")
    _gazetteer(tokens, tags, LOCATIONS, "LOC")
    for i in range(n):  # ORG: a capitalised run that ends in an organisation word
        if tokens[i] in ORG_ENDINGS and tags[i] == "O" and i > 0 and _capitalised(tokens[i - 1]):
            start = i
            while start > 0 and _capitalised(tokens[start - 1]) and tags[start - 1] == "O":
                start -= 1
            if start < i:
                _mark(tags, start, i + 1, "ORG")
    for i in range(n):  # PER: first name or title, then capitalised words
        if tags[i] != "O":
            continue
        if tokens[i] in FIRST_NAMES or (tokens[i] in TITLES and i + 1 < n and _capitalised(tokens[i + 1])):
            start = i + 1 if tokens[i] in TITLES else i
            end = start + 1
            while (
                end < n and _capitalised(tokens[end]) and tags[end] == "O" and tokens[end] not in ORG_ENDINGS
            ):
                end += 1
            if end - start >= (1 if tokens[i] in TITLES else 2):
                _mark(tags, start, end, "PER")
    return tags


def mrpc_sentences(path: Path) -> list[list[str]]:
    seen, out = set(), []
    for line in path.read_text(encoding="utf-8-sig").split("\n")[1:]:
        fields = line.split("\t")
        if len(fields) < 5:
            continue
        for text in fields[3:5]:
            if text not in seen:
                seen.add(text)
                out.append(text.split())
    return out


def write_conll(path: Path, sentences: list[list[str]]) -> Counter:
    counts: Counter = Counter()
    with open(path, "w", encoding="utf-8") as handle:
        for tokens in sentences:
            tags = tag(tokens)
            counts.update(t[2:] for t in tags if t.startswith("B-"))
            handle.write("".join(f"{w}\t{t}\n" for w, t in zip(tokens, tags)) + "\n")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        epilog="Time: about 20 min (several training runs).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="benchmarks/out/ner")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--method", default="unipelt")
    parser.add_argument("--train-sentences", type=int, default=1000)
    parser.add_argument("--valid-sentences", type=int, default=200)
    parser.add_argument("--test-sentences", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lr", type=float, default=None, help="added modules (default: the method's)")
    parser.add_argument("--lr-head", type=float, default=None, help="the fresh tagging head")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from unipelt.training import TrainConfig, train

    glue = Path(args.data_dir or os.environ.get("UNIPELT_DATA_DIR") or "../shared/data/glue")
    out = Path(args.out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train_pool = mrpc_sentences(glue / "MRPC" / "train.tsv")
    order = rng.permutation(len(train_pool))
    test_pool = mrpc_sentences(glue / "MRPC" / "dev.tsv")
    parts = {
        "train": [train_pool[i] for i in order[: args.train_sentences]],
        "valid": [
            train_pool[i] for i in order[args.train_sentences : args.train_sentences + args.valid_sentences]
        ],
        "test": [test_pool[i] for i in rng.permutation(len(test_pool))[: args.test_sentences]],
    }
    entity_counts = {name: dict(write_conll(data / f"{name}.conll", part)) for name, part in parts.items()}
    run = out / f"{args.method}-s{args.seed}"
    started = time.time()
    if not (run / "metrics.json").is_file():
        config = TrainConfig(
            output_dir=str(run),
            model=args.model,
            method=args.method,
            task=None,
            train_file=str(data / "train.conll"),
            valid_file=str(data / "valid.conll"),
            test_file=str(data / "test.conll"),
            task_type="token-classification",
            seed=args.seed,
            lr=args.lr,
            lr_head=args.lr_head,
            epochs=args.epochs,
            max_length=args.max_length,
            threads=args.threads,
        )
        train(config, resume=(run / "config.json").is_file())
    metrics = json.loads((run / "metrics.json").read_text())
    summary = {"entities": entity_counts, "test": metrics["test"], "train_seconds": metrics["train_seconds"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    test = metrics["test"]
    kinds = sorted(k[3:] for k in test if k.startswith("f1_"))
    print(f"entities per split: {entity_counts}")
    print(
        f"test entity F1 {100 * test['f1']:.2f} (P {100 * test['precision']:.2f}, R {100 * test['recall']:.2f}), "
        f"word accuracy {100 * test['accuracy']:.2f}"
    )
    print(" | ".join(f"{k} {100 * test[f'f1_{k}']:.1f} (n={int(test[f'support_{k}'])})" for k in kinds))
    print(f"training {metrics['train_seconds']:.0f} s; this invocation {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
