"""Instruction data with checkable answers, self-distilled from the AR source, plus real text.

The prompts come from small task families whose correct answer a program can check (counting,
copying a list, capitals, plurals, addition, alphabet ranges). The *responses* are the AR source's
own greedy answers, so adapting to block diffusion is measured against what the source does, and
task accuracy is graded against the truth for both. Held-out prompts are unseen combinations
(other countries, nouns, number ranges, word lists).

Real text is the Python reference manual that ships inside CPython (`pydoc_data.topics`): real
English prose, available offline; held-out topics are every fifth one.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.data.errors import DataError, require_file
from pipelines.data.text import reference_manual_text

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "China": "Beijing",
    "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Bras", "India":
    "New Delhi", "Mexico": "Mexico City", "Greece": "Athens", "Portugal": "Lisbon", "Norway": "Oslo", "Sweden":
    "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Austria": "Vienna",
    "Hungary": "Budapest", "Ireland": "Dublin", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago",
    "Argentina": "Buenos Aires", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Turkey": "Ankara", "Iran": "Tehran",
    "Iraq": "Baghdad", "Cuba": "Havana", "Belgium": "Brussels", "the Netherlands": "Amsterdam", "Switzerland":
    "Bern", "South Korea": "Seoul", "Indonesia": "Jakarta", "Colombia": "Bogot", "the United Kingdom": "London",
}
PLURALS = {
    "mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "goose": "geese", "man": "men",
    "woman": "women", "person": "people", "ox": "oxen", "leaf": "leaves", "knife": "knives", "wolf": "wolves",
    "city": "cities", "baby": "babies", "box": "boxes", "bus": "buses", "church": "churches", "cat": "cats",
    "dog": "dogs", "house": "houses", "tree": "trees", "car": "cars", "book": "books", "glass": "glasses",
    "wish": "wishes", "potato": "potatoes", "hero": "heroes", "life": "lives", "wife": "wives", "half": "halves",
    "party": "parties", "story": "stories", "day": "days", "key": "keys", "toy": "toys", "boy": "boys",
    "sheep": "sheep", "fish": "fish", "deer": "deer", "cactus": "cacti",
}
WORDS = ("apple river stone cloud lamp chair garden window pencil orange tiger rocket candle mirror bottle planet "
         "forest bridge island castle hammer violin basket ladder pillow saddle button jacket wallet carpet "
         "engine rabbit turtle parrot dolphin spider monkey camera guitar helmet anchor compass lantern").split()


@dataclass(frozen=True)
class Task:
    family: str
    prompt: str
    check: Callable[[str], bool]
    key: str  # what makes two tasks "the same combination"
    truth: str  # a correct answer (for demos and tests; training uses the AR source's own answers)


def _in_order(answer: str, items: Sequence[str]) -> bool:
    return re.search(r"\W+".join(re.escape(i) for i in items), answer) is not None


def _task_families(rng: random.Random) -> list[Callable[[], Task]]:
    def count() -> Task:
        a = rng.randint(1, 90)
        b = a + rng.randint(5, 14)
        nums = [str(i) for i in range(a, b + 1)]
        return Task("count", f"List the numbers from {a} to {b}, separated by commas.",
                    lambda ans, n=nums: ", ".join(n) in ans, f"count {a} {b}", ", ".join(nums))

    def repeat() -> Task:
        words = rng.sample(WORDS, rng.randint(4, 8))
        return Task("repeat", f"Repeat this list exactly: {', '.join(words)}.",
                    lambda ans, w=words: _in_order(ans, w), "repeat " + " ".join(words), ", ".join(words))

    def capital() -> Task:
        country = rng.choice(sorted(CAPITALS))
        return Task("capital", f"What is the capital of {country}?", lambda ans, c=CAPITALS[country]: c in ans,
                    f"capital {country}", f"The capital of {country} is {CAPITALS[country]}.")

    def plural() -> Task:
        noun = rng.choice(sorted(PLURALS))
        return Task("plural", f"What is the plural of '{noun}'?",
                    lambda ans, p=PLURALS[noun]: re.search(rf"\b{p}\b", ans, re.I) is not None, f"plural {noun}",
                    f"The plural of '{noun}' is '{PLURALS[noun]}'.")

    def add() -> Task:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        return Task("add", f"What is {a} + {b}?", lambda ans, s=a + b: re.search(rf"\b{s}\b", ans) is not None,
                    f"add {a} {b}", f"{a} + {b} = {a + b}.")

    def alphabet() -> Task:
        start = rng.randint(0, 18)
        letters = [chr(ord("A") + i) for i in range(start, start + rng.randint(4, 8))]
        return Task("alphabet", f"List the letters of the alphabet from {letters[0]} to {letters[-1]}.",
                    lambda ans, ls=letters: _in_order(ans, ls), f"alphabet {letters[0]} {letters[-1]}",
                    ", ".join(letters))

    return [count, repeat, capital, plural, add, alphabet]


def _is_heldout(task: Task) -> bool:
    """Held-out combinations: a fixed fifth of the keys, the same on every machine (crc32, not hash())."""
    return zlib.crc32(task.key.encode()) % 5 == 0


def make_tasks(n: int, split: str, seed: int = 0) -> list[Task]:
    """n distinct tasks of `split` ("train" or "heldout"), families in turn; no key is in both splits."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = random.Random(f"{seed}-{split}")
    families = _task_families(rng)
    tasks, seen = [], set()
    misses = [0] * len(families)
    turn = 0
    while len(tasks) < n:
        live = [i for i, m in enumerate(misses) if m < 500]  # a family with no new key in 500 draws is spent
        if not live:
            raise ValueError(f"cannot draw {n} distinct {split} tasks (only {len(tasks)} exist); ask for fewer")
        index = live[turn % len(live)]
        task = families[index]()
        if task.key in seen or _is_heldout(task) != (split == "heldout"):
            misses[index] += 1
            continue
        turn += 1
        misses[index] = 0
        seen.add(task.key)
        tasks.append(task)
    return tasks


def grade(tasks: Sequence[Task], answers: Sequence[str]) -> float:
    """Fraction of answers that pass their task's check."""
    return sum(t.check(a) for t, a in zip(tasks, answers, strict=True)) / max(len(tasks), 1)


def conversation(task_id: str, prompt: str, answer: str) -> dict:
    """One item in the LLaVA-style conversation format (no image), as the VLM data uses."""
    return {"id": task_id, "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}


def read_conversations(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from a LLaVA-style JSON file: the last human turn and the reply after it."""
    path = require_file(path, "conversation JSON")
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of conversations, got {type(items).__name__}")
    pairs = []
    for i, item in enumerate(items):
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not turns or not isinstance(turns, list) or len(turns) < 2:
            raise DataError(f"{path}: item {i} has no 'conversations' list of at least two turns")
        human, gpt = turns[-2], turns[-1]
        if human.get("from") != "human" or gpt.get("from") != "gpt" or "value" not in human or "value" not in gpt:
            raise DataError(f"{path}: item {i} must end with a 'human' turn and a 'gpt' turn, each with a 'value'")
        pairs.append((str(human["value"]), str(gpt["value"])))
    return pairs



def chat_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a one-turn chat up to the assistant's turn (the source's own template)."""
    return tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": prompt}]))


def write_selfdistill_data(out: str | Path, source: str = "smollm2", n_train: int = 600, n_heldout: int = 60,
                           max_new_tokens: int = 96, batch_size: int = 16, seed: int = 0) -> Path:
    """Answer generated prompts with the AR source (greedy) and write the data folder:
    train.json / heldout.json (conversations), text_train.txt / text_heldout.txt, meta.json.

    Answers that do not stop within `max_new_tokens` (the 135M source sometimes loops) are dropped
    from train.json; held-out prompts are all kept, since they are graded against the truth.
    """
    from tqdm import tqdm

    from pipelines.nn.generate import generate
    from vlm.model import load_source

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_source(source)
    stop = tokenizer.eos_id
    for split, n in (("train", n_train), ("heldout", n_heldout)):
        tasks = make_tasks(n, split, seed)
        items = []
        for start in tqdm(range(0, len(tasks), batch_size), desc=f"AR source answers ({split})", unit="batch"):
            chunk = tasks[start:start + batch_size]
            gen = generate(model, [chat_prompt(tokenizer, t.prompt) for t in chunk], max_new_tokens=max_new_tokens,
                           pad_id=stop, stop_ids=[stop])
            for task, tokens in zip(chunk, gen.tokens, strict=True):
                if split == "train" and (not tokens or tokens[-1] != stop):
                    continue
                items.append(conversation(task.key, task.prompt, tokenizer.decode(tokens)))
        (out / f"{split}.json").write_text(json.dumps(items, indent=1, ensure_ascii=False))
        (out / f"text_{split}.txt").write_text(reference_manual_text(split))
    meta = {"source": source, "seed": seed, "n_train": n_train, "n_heldout": n_heldout,
            "max_new_tokens": max_new_tokens}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out
