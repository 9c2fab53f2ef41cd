"""The reference ReAct agent on real ALFWorld games, decorated with `@kd.episode`.

Offline by default: the teacher is ALFWorld's handcoded expert (a priced oracle) and the
student the local Qwen2.5-Coder-1.5B model through llama.cpp. Any litellm model strings work:

    python examples/alfworld_react.py --mode collect --games 3 --split train
    python examples/alfworld_react.py --mode distill --games 2 --student local/qwen2.5-coder-1.5b
    python examples/alfworld_react.py --mode distill --teacher openai/gpt-4.1 \
        --student openai/gpt-4.1-mini
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import agentkd
from agentkd.envs import expert, react_agent, react_key
from agentkd.envs.alfworld import (
    AlfWorldEnv,
    admissible_command,
    list_games,
    same_admissible_command,
)


def main(argv: list[str] | None = None) -> list[agentkd.RunSummary]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="collect", choices=["teacher", "collect", "student",
                                                              "icd", "distill"])
    parser.add_argument("--teacher", default=expert.EXPERT_MODEL)
    parser.add_argument("--student", default="local/qwen2.5-coder-1.5b")
    parser.add_argument("--split", default="train")
    parser.add_argument("--games", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--log", default="sqlite:///.agentkd/example.db")
    parser.add_argument("--demos", default=".agentkd/example-demos")
    args = parser.parse_args(argv)

    expert.register()
    kd = agentkd.Distiller(teacher=args.teacher, student=args.student, mode=args.mode,
                           log=args.log, demos=args.demos if args.mode not in ("teacher",
                                                                                "student")
                           else None, equivalent=same_admissible_command,
                           valid=admissible_command, key=react_key)

    # The agent is unchanged; the decorator makes each call one logged episode.
    @kd.episode(task_id=lambda env: env.task_id, task_type=lambda env: env.task_type,
                success=lambda result: result.success)
    def play(env: AlfWorldEnv) -> object:
        return react_agent(env, args.teacher, max_steps=args.max_steps)

    for game in list_games(args.split)[: args.games]:
        env = AlfWorldEnv(game)
        try:
            result = play(env)
            print(f"{env.task_id}: success={result.success} steps={result.steps}")
        finally:
            env.close()
    kd.close()
    summaries = agentkd.run_summaries(kd.log, run_ids=[kd.run_id])
    print(summaries[0].model_dump_json(indent=2))
    return summaries


if __name__ == "__main__":
    main()
