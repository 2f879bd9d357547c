"""Make ``reviews.csv``: short product reviews labelled positive or negative.

Run ``python studies/data/make_reviews.py`` to rebuild the file byte for byte (seeded).

The data set is meant to make hyperparameters matter, so it is not separable by a
keyword: every sentiment word appears in both classes through negation ("not great"),
contrast ("the case is flimsy, but the sound is superb" is positive: the clause after
"but" decides) and concession ("although ..."). Products and aspects carry no signal.
8 % of labels are flipped at random, as in real crowd-labelled data, so no model can
reach 100 % and overfitting costs accuracy.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SEED = 2024
N_ROWS = 1200
LABEL_NOISE = 0.08

PRODUCTS = [
    "headphones",
    "blender",
    "laptop",
    "phone",
    "kettle",
    "backpack",
    "monitor",
    "keyboard",
    "camera",
    "speaker",
    "vacuum",
    "watch",
    "printer",
    "router",
    "drill",
]
ASPECTS = [
    "battery",
    "sound",
    "screen",
    "price",
    "build quality",
    "design",
    "setup",
    "customer service",
    "delivery",
    "manual",
    "app",
    "fit",
    "noise level",
    "warranty",
]
POSITIVE = [
    "great",
    "excellent",
    "superb",
    "reliable",
    "solid",
    "impressive",
    "fantastic",
    "good",
    "comfortable",
    "fast",
    "sturdy",
    "pleasant",
    "worth it",
    "intuitive",
]
NEGATIVE = [
    "terrible",
    "awful",
    "flimsy",
    "disappointing",
    "poor",
    "slow",
    "useless",
    "bad",
    "annoying",
    "cheap-feeling",
    "unreliable",
    "confusing",
    "broken",
    "weak",
]
OPENERS = [
    "",
    "Honestly, ",
    "After two weeks, ",
    "Bought this for my dad. ",
    "Well, ",
    "I have mixed feelings. ",
    "Second one I own. ",
    "Quick review: ",
]


def clause(rng: random.Random, positive: bool) -> str:
    """A clause whose polarity is ``positive``; negation hides it from single words."""
    aspect = rng.choice(ASPECTS)
    negate = rng.random() < 0.35
    words = NEGATIVE if positive == negate else POSITIVE
    adjective = rng.choice(words)
    if negate:
        return rng.choice(
            [
                f"the {aspect} is not {adjective}",
                f"the {aspect} is far from {adjective}",
                f"I would not call the {aspect} {adjective}",
            ]
        )
    return rng.choice(
        [
            f"the {aspect} is {adjective}",
            f"the {aspect} feels {adjective}",
            f"the {aspect} turned out {adjective}",
        ]
    )


def review(rng: random.Random, positive: bool) -> str:
    """One review whose overall sentiment is ``positive``."""
    product = rng.choice(PRODUCTS)
    form = rng.random()
    if form < 0.3:
        body = f"{clause(rng, positive)} and {clause(rng, positive)}"
    elif form < 0.6:
        body = f"{clause(rng, not positive)}, but {clause(rng, positive)}"
    elif form < 0.8:
        body = f"although {clause(rng, not positive)}, {clause(rng, positive)}"
    else:
        body = clause(rng, positive)
    verdict = rng.choice(
        [
            "",
            f" Would {'' if positive else 'not '}buy this {product} again.",
            f" Overall the {product} is {'a keeper' if positive else 'a letdown'}.",
        ]
        if rng.random() < 0.25
        else [""]
    )
    opener = rng.choice(OPENERS)
    if not opener.endswith(", "):  # a new sentence starts with a capital letter
        body = body[0].upper() + body[1:]
    text = opener + body + "." + verdict
    return text.replace(" .", ".")


def make(seed: int = SEED, n_rows: int = N_ROWS) -> list[tuple[str, str]]:
    """Rows of (text, label), half of each class before noise, in random order."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_rows):
        positive = i % 2 == 0
        label = positive if rng.random() >= LABEL_NOISE else not positive
        rows.append((review(rng, positive), "positive" if label else "negative"))
    rng.shuffle(rows)
    return rows


if __name__ == "__main__":
    out = Path(__file__).with_name("reviews.csv")
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(make())
    print(f"wrote {out}")
