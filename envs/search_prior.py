"""Where ALFWorld keeps things: the rescuing teacher's search order, learnt from the train split.

An LLM teacher looking for an apple opens the fridge before the drawers: it knows where
apples usually are, not where this game put them. This module owns that common sense for
`alfworld/rescue`: for each object class, how often one receptacle of each class holds it at
the start of a train-split game (objects of that class found in receptacles of that class,
over receptacles of that class in the rooms where the object class occurs). The teacher
searches the likeliest receptacle first, ties in room order, so its search is a fixed function
of the task and of what the transcript shows: a student can learn it, and its samples can agree
on it. Only the train split is read, never the games the teacher is scored on.

The table ships as `search_prior.json`; regenerate it with
`python -m agentkd.envs.search_prior --data ../shared/data/alfworld`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

PRIOR_FILE = Path(__file__).with_name("search_prior.json")
_FACT = re.compile(r"\((receptacleType|objectType|inReceptacle) (\S+) (\S+)\)")


def _cls(name: str) -> str:
    """PDDL `DrawerType` or `Drawer_bar__plus_...` → the game's class name, `drawer`."""
    return name.split("_", 1)[0].removesuffix("Type").lower()


def compute(data: Path) -> dict[str, dict[str, float]]:
    """object class → {receptacle class: share of such receptacles holding one at the start},
    over every game of `data`/json_2.1.1/train (rounded to 4 digits; zero shares left out)."""
    games = sorted((data / "json_2.1.1" / "train").glob("*/*/game.tw-pddl"))
    if not games:
        raise FileNotFoundError(f"no train games under {data}/json_2.1.1/train")
    found: Counter[tuple[str, str]] = Counter()
    exposed: Counter[tuple[str, str]] = Counter()
    for game in games:
        problem = json.loads(game.read_text())["pddl_problem"]
        receptacles: Counter[str] = Counter()
        objects: set[str] = set()
        for fact, entity, value in _FACT.findall(problem):
            if fact == "receptacleType" and not entity.startswith("?"):
                receptacles[_cls(value)] += 1
            elif fact == "objectType" and not entity.startswith("?"):
                objects.add(_cls(value))
            elif fact == "inReceptacle" and not entity.startswith("?"):
                found[_cls(entity), _cls(value)] += 1
        for obj in objects:
            for recep, count in receptacles.items():
                exposed[obj, recep] += count
    prior: dict[str, dict[str, float]] = {}
    for (obj, recep), count in sorted(found.items()):
        if exposed[obj, recep]:
            prior.setdefault(obj, {})[recep] = round(count / exposed[obj, recep], 4)
    return prior


@cache
def shipped() -> dict[str, dict[str, float]]:
    """The table computed from ALFWorld 0.4.2's train split, as shipped with agentkd."""
    table: dict[str, dict[str, float]] = json.loads(PRIOR_FILE.read_text())
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path,
                        help="ALFWorld data folder (holds json_2.1.1/train)")
    parser.add_argument("--out", type=Path, default=PRIOR_FILE)
    args = parser.parse_args(argv)
    try:
        table = compute(args.data)
    except FileNotFoundError as exc:
        parser.exit(2, f"error: {exc}; pass --data the ALFWorld folder (alfworld-download)\n")
    args.out.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"{len(table)} object classes -> {args.out}")


if __name__ == "__main__":
    main()
