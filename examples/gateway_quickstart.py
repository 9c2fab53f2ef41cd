"""An agent that knows nothing about agentkd, pointed at `agentkd serve` by its base URL.

The gateway serves the teacher model the agent asks for through the cascade: a student
samples each step three times and acts when its samples agree. Here both models answer
with litellm's `mock_response`, so the example runs offline and costs nothing real; with
real models drop the `mock_response` entries and export the providers' keys. The same gateway
from a shell: `agentkd serve --teacher openai/gpt-4.1 --student openai/gpt-4.1-mini`.

    python examples/gateway_quickstart.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import httpx
import openai

import agentkd
from agentkd.gateway import Gateway, GatewayConfig, create_app, running

TEACHER, STUDENT = "openai/gpt-4.1", "openai/gpt-4.1-mini"


def agent(base_url: str, task: str) -> list[str]:
    """A plain openai-SDK agent loop: three steps of one task, then its outcome."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="anything-on-loopback")
    headers = {"X-Agentkd-Episode": task, "X-Agentkd-Goal": "put a mug on the desk"}
    history = [{"role": "system", "content": "Act with 'Action: <command>'."},
               {"role": "user", "content": "You are in a kitchen. Put a mug on the desk."}]
    actors = []
    for observation in ("You see a mug.", "You hold the mug.", "The desk is here."):
        raw = client.chat.completions.with_raw_response.create(
            model=TEACHER, messages=history, extra_headers=headers)
        reply = raw.parse().choices[0].message.content
        actors.append(raw.headers["x-agentkd-actor"])
        history += [{"role": "assistant", "content": reply},
                    {"role": "user", "content": observation}]
    httpx.post(f"{base_url}/agentkd/episodes/{task}/finish", json={"success": True})
    return actors


def main(workdir: str | Path) -> list[agentkd.RunSummary]:
    log = f"sqlite:///{Path(workdir) / 'gateway.db'}"
    config = GatewayConfig.model_validate({"log": log, "route": [{
        "teacher": TEACHER, "student": STUDENT, "mode": "distill",
        "teacher_kwargs": {"mock_response": "Thought: the mug first.\nAction: take mug"},
        "student_kwargs": {"mock_response": "Thought: the mug first.\nAction: take mug"}}]})
    gateway = Gateway(config)
    with running(create_app(gateway)) as url:
        for task in ("kitchen-1", "kitchen-2"):
            print(task, "steps served by", agent(url, task))
    summaries = agentkd.run_summaries(agentkd.TrajectoryLog(log),
                                      run_ids=[gateway.routes[TEACHER].run_id])
    for s in summaries:
        print(f"{s.episodes} episodes, success {s.success_rate:.0%}, teacher-call rate "
              f"{s.teacher_call_rate:.0%}, ${s.cost_per_episode:.6f} per episode")
    return summaries


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(sys.argv[1] if len(sys.argv) > 1 else tmp)
