"""The gateway's core, independent of HTTP: one `Gateway` per worker process serves a
`ChatCall` — a step of an episode through the Distiller of the route its model names, or a
call passed through to litellm — and logs it.

A request for a configured teacher model (or an alias) is an agent step: its episode is
found (`agentkd.gateway.episodes`), and the step runs in the Distiller's cascade. Any other
model goes to litellm untouched and is logged as a call of the gateway's passthrough run
(role ``passthrough``) with its cost. A request asking for several choices (``n > 1``) of a
teacher is not one agent action, so it is passed through to the teacher.

Serving is blocking (the Distiller, litellm and the log are synchronous); the HTTP layer
runs it in the gateway's thread pool. While a step streams, the teacher's chunks go to a
`StreamSink` as the provider sends them.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import litellm

from agentkd import llm
from agentkd.distiller import Distiller, TeacherCall, check_messages
from agentkd.errors import BudgetExceeded
from agentkd.gateway.auth import KeyRing, KeyState
from agentkd.gateway.config import GatewayConfig, with_env
from agentkd.gateway.episodes import EpisodeHeaders, Episodes, LiveEpisode
from agentkd.gateway.errors import GatewayError, upstream_error
from agentkd.gateway.metrics import PASSTHROUGH, Metrics
from agentkd.gateway.shapes import ChatCall, Delta, message_of
from agentkd.gateway.upstream import streamed_call
from agentkd.log import TrajectoryLog


class StreamSink(Protocol):
    """Where a streamed answer goes: `begin` once (the response headers: who answers),
    then its `delta`s."""

    def begin(self, headers: dict[str, str]) -> None: ...

    def delta(self, delta: Delta) -> None: ...


@dataclass
class Outcome:
    """A served request: the answer and who gave it."""

    response: litellm.ModelResponse
    actor: str  # student | teacher | passthrough
    verdict: str
    run_id: str
    episode: str | None
    cost_usd: float
    streamed: bool  # its deltas already went to the sink

    def headers(self) -> dict[str, str]:
        return answer_headers(self.actor, self.verdict, self.run_id, self.episode)


def answer_headers(actor: str, verdict: str, run_id: str, episode: str | None
                   ) -> dict[str, str]:
    """The response headers that say who answered, in which run and episode."""
    out = {"X-Agentkd-Actor": actor, "X-Agentkd-Verdict": verdict, "X-Agentkd-Run": run_id}
    if episode is not None:
        out["X-Agentkd-Episode"] = episode
    return out


class _Begun:
    """Hands deltas to a sink, beginning its answer (the headers) with the first one: a
    provider that fails before sending anything is answered with a plain error status."""

    def __init__(self, sink: StreamSink, headers: dict[str, str]) -> None:
        self.sink, self.headers, self.begun = sink, headers, False

    def __call__(self, delta: Delta) -> None:
        if not self.begun:
            self.sink.begin(self.headers)
            self.begun = True
        self.sink.delta(delta)


class Gateway:
    """The routes' Distillers, the open episodes, the keys and the metrics of one worker."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.keys = KeyRing(config.key, config.host)
        self.log = TrajectoryLog(config.log)
        self.routes: dict[str, Distiller] = {}
        for i, route in enumerate(config.route):
            distiller = Distiller(
                route.teacher, route.student, mode=route.mode, cascade=route.cascade,
                retrieval=route.retrieval, demos=route.demos, log=self.log, run=route.run,
                budget=route.budget, teacher_retries=route.teacher_retries,
                teacher_kwargs=with_env(route.teacher_kwargs, f"route[{i}].teacher_kwargs"),
                student_kwargs=with_env(route.student_kwargs, f"route[{i}].student_kwargs"))
            for name in route.names:
                self.routes[name] = distiller
        self.upstream = {model: with_env(kwargs, f"upstream.{model}")
                         for model, kwargs in config.upstream.items()}
        self.passthrough_run = config.passthrough_run or (
            f"passthrough-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
        self._passthrough_logged = False
        self.episodes = Episodes(config.idle_timeout_s)
        self.metrics = Metrics()
        self.pool = ThreadPoolExecutor(max_workers=config.threads,
                                       thread_name_prefix="agentkd-gateway")

    # ---- lookups -------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return [*self.routes, *(m for m in self.upstream if m not in self.routes)]

    def route_label(self, model: str) -> str:
        distiller = self.routes.get(model)
        return distiller.teacher if distiller is not None else PASSTHROUGH

    # ---- serving -------------------------------------------------------------------------

    def serve(self, call: ChatCall, headers: EpisodeHeaders, key: KeyState | None,
              sink: StreamSink | None = None) -> Outcome:
        """Serve one request; raises `GatewayError` (or an agentkd error) when it cannot."""
        check_messages(call.messages)
        if call.stream and int(call.params.get("n") or 1) > 1:
            raise GatewayError(400, "invalid_request", "stream=true with n > 1 is not "
                               "supported; ask for one choice or do not stream", param="n")
        distiller = self.routes.get(call.model)
        if distiller is None:
            return self._passthrough(call, call.model, self.upstream.get(call.model, {}),
                                     key, sink)
        if int(call.params.get("n") or 1) > 1:
            return self._passthrough(call, distiller.teacher, distiller.teacher_kwargs, key,
                                     sink)
        while True:
            live = self.episodes.resolve(distiller, headers, call.messages)
            with live.lock:
                if not live.closed:  # else finished or timed out while this request waited
                    return self._step(live, call, key, sink)

    def _step(self, live: LiveEpisode, call: ChatCall, key: KeyState | None,
              sink: StreamSink | None) -> Outcome:
        distiller, scope = live.distiller, live.scope
        before = scope.cost_usd
        streamed = [False]
        teacher_call: TeacherCall | None = None
        if sink is not None:
            def teacher_call(messages: list[dict[str, Any]], kwargs: dict[str, Any],
                             role: str, verdict: str) -> llm.CallResult:
                emit = _Begun(sink, answer_headers("teacher", verdict, distiller.run_id,
                                                   live.key))
                result = streamed_call(distiller.teacher, messages, kwargs, role=role,
                                       retries=distiller.teacher_retries, emit=emit)
                streamed[0] = emit.begun
                return result
        try:
            response = distiller.serve_step(scope, call.messages, teacher_call=teacher_call,
                                            **call.params)
        except BudgetExceeded as exc:
            self.episodes.drop(live)
            distiller.end_episode(scope, exc)
            raise
        finally:
            cost = scope.cost_usd - before
            self.keys.charge(key, cost)
        info = response._hidden_params["agentkd"]
        self.episodes.answered(live, call.messages, message_of(response))
        self.metrics.step(distiller.teacher, info["verdict"], info["actor"], cost)
        return Outcome(response, info["actor"], info["verdict"], distiller.run_id, live.key,
                       cost, streamed[0])

    def _passthrough(self, call: ChatCall, model: str, upstream: dict[str, Any],
                     key: KeyState | None, sink: StreamSink | None) -> Outcome:
        if model == call.model and not self.config.passthrough:
            raise self._unknown(model)
        try:
            litellm.get_llm_provider(model)
        except Exception:  # litellm raises BadRequestError for a model it cannot route
            raise self._unknown(model) from None
        kwargs = {**upstream, **call.params}
        emit = _Begun(sink, answer_headers(PASSTHROUGH, PASSTHROUGH, self.passthrough_run,
                                           None)) if sink is not None else None
        if emit is not None:
            result = streamed_call(model, call.messages, kwargs, role=PASSTHROUGH, retries=0,
                                   emit=emit)
        else:
            result = llm.complete(model, call.messages, role=PASSTHROUGH, **kwargs)
        self._log_passthrough(result.record)
        self.keys.charge(key, result.record.cost_usd)
        self.metrics.cost.labels(PASSTHROUGH).inc(result.record.cost_usd)
        if result.response is None:
            raise upstream_error(model, result.record.error or "")
        return Outcome(result.response, PASSTHROUGH, PASSTHROUGH, self.passthrough_run, None,
                       result.record.cost_usd, emit is not None and emit.begun)

    def _unknown(self, model: str) -> GatewayError:
        served = ", ".join(repr(m) for m in self.model_names()) or "none configured"
        hint = ("" if self.config.passthrough else
                "; passthrough is off, so only configured models are served")
        return GatewayError(404, "not_found", f"model {model!r} is not served here (served: "
                            f"{served}; any model litellm can route passes through{hint})",
                            param="model", code="model_not_found")

    def _log_passthrough(self, record: Any) -> None:
        if not self._passthrough_logged:
            self.log.ensure_run(self.passthrough_run, mode="teacher", teacher=PASSTHROUGH,
                                student=None, label="models passed through by agentkd serve")
            self._passthrough_logged = True
        self.log.record_calls(self.passthrough_run, None, [record])

    # ---- episodes ------------------------------------------------------------------------

    def finish(self, key: str, success: bool | None, reward: float | None,
               info: dict[str, Any]) -> list[int]:
        """End the open episodes named `key` with this outcome; their ids in the log."""
        ended = []
        for live in self.episodes.take(key):
            with live.lock:
                live.scope.finish(success=success, reward=reward, **info)
                live.distiller.end_episode(live.scope)
            ended.append(live.scope.episode_id)
        if not ended:
            raise GatewayError(404, "not_found", f"no open episode {key!r} in this worker "
                               f"(it was finished, timed out, or never started here)",
                               code="episode_not_found")
        return ended

    def close_idle(self) -> int:
        stale = self.episodes.idle()
        for live in stale:
            with live.lock:
                live.distiller.end_episode(live.scope)
        return len(stale)

    def shutdown(self) -> None:
        """Mark the episodes still open as interrupted (an agent may resume elsewhere)."""
        for live in self.episodes.all():
            self.log.finish_episode(live.scope.episode_id, status="interrupted", success=None)
        for distiller in {id(d): d for d in self.routes.values()}.values():
            distiller.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
