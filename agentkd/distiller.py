"""The Distiller: serves the teacher's calls with a cheaper student whenever that is safe.

One step (see DESIGN.md): retrieval key → demos → N student samples → gate → the student's
majority answer or the teacher's → one logged step. Every student step logs its agreement
signals; on the share of steps `Cascade.shadow` draws, the teacher's action is logged beside
them as a calibration label (asked for separately when the student acted, never returned).
Modes pick which parts run:

- ``teacher``  teacher only (the baseline);
- ``collect``  teacher only, and successful episodes become demos;
- ``student``  one student sample, zero-shot;
- ``icd``      one student sample with retrieved demos, no gate;
- ``distill``  demos + N samples + the gate, deferring to the teacher on disagreement; from
  no store or an empty one it starts cold (the gate over zero-shot samples), and with
  ``grow_demos`` the teacher's steps of each successful episode join the store as it runs.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import litellm

from agentkd import intercept, llm
from agentkd.cascades import (
    ActionExtractor,
    Gate,
    canonical_action,
    default_extractor,
    extract_action,
)
from agentkd.cascades.gate import Decision, Equivalence, Validity
from agentkd.cascades.signals import action_logprob
from agentkd.config import Budget, Cascade, Retrieval, check_mode, load_cascade, validated
from agentkd.costs import model_label
from agentkd.episode import EpisodeScope, current_episode
from agentkd.errors import BudgetExceeded, InputError, StoreError, TeacherError
from agentkd.first_thought import seed_first_thought
from agentkd.log import CallRecord, StepRecord, TrajectoryLog
from agentkd.retrieval.collect import demo_episode_from_log, demos_from_log
from agentkd.retrieval.formatting import DemoTemplate, default_template, inject_demos
from agentkd.retrieval.keys import KeyFunction, StepKey, default_key
from agentkd.retrieval.store import DemoStore, DemoWindow

F = TypeVar("F", bound=Callable[..., Any])
TeacherCall = Callable[[list[dict[str, Any]], dict[str, Any], str, str], llm.CallResult]
"""Serves the teacher's answer in place of `llm.complete`: called with (messages, litellm
kwargs, call role, the step's verdict so far); `agentkd serve` streams the answer through."""
_VALID_ROLES = {"system", "user", "assistant", "tool", "function", "developer"}


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """Validate chat messages at the boundary, with an error that says what to fix."""
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} "
                         f"dicts, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InputError(f"messages[{i}] must be a dict with 'role' and 'content', "
                             f"got {type(message).__name__}")
        role = message.get("role")
        if role not in _VALID_ROLES:
            raise InputError(f"messages[{i}] has role {role!r}; expected one of "
                             f"{sorted(_VALID_ROLES)}")
        content = message.get("content")
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and not (isinstance(tool_calls, list) and all(
                isinstance(c, dict) or hasattr(c, "function") for c in tool_calls)):
            raise InputError(f"messages[{i}].tool_calls must be a list of tool calls "
                             f"({{'id': ..., 'type': 'function', 'function': {{'name': ..., "
                             f"'arguments': ...}}}}), got {type(tool_calls).__name__}")
        if content is None and not tool_calls:
            raise InputError(f"messages[{i}] ({role}) has no 'content'")
        if content is not None and not isinstance(content, str | list):
            raise InputError(f"messages[{i}].content must be a string or a list of parts, "
                             f"got {type(content).__name__}")
        parts = content if isinstance(content, list) else [content]
        for j, part in enumerate(parts):
            if isinstance(content, list) and not (isinstance(part, dict) and "type" in part):
                raise InputError(f"messages[{i}].content[{j}] must be a dict with a 'type' "
                                 f"(e.g. {{'type': 'text', 'text': ...}}), got {part!r:.60}")
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str) and not _is_unicode(text):
                raise InputError(f"messages[{i}] ({role}) holds text that is not valid Unicode "
                                 f"(a lone surrogate, e.g. from bytes decoded with "
                                 f"'surrogateescape'); decode it with errors='replace' first")
    return messages


def _demo_action(windows: list[DemoWindow]) -> str | None:
    """The action of the best-matching demo step (the first window's hit)."""
    if not windows:
        return None
    best = windows[0]
    offset = best.hit_step - best.first_step
    return canonical_action(best.steps[offset].action) if 0 <= offset < len(best.steps) else None


@dataclass
class _Step:
    """What one step has gathered so far, stage by stage (see `Distiller._step`)."""

    start: float
    turns: tuple[str, list[dict[str, Any]]]  # (prompt hash, turns new since the last step)
    key: StepKey
    calls: list[CallRecord] = field(default_factory=list)
    windows: list[DemoWindow] = field(default_factory=list)
    block: str = ""
    samples: list[dict[str, Any]] = field(default_factory=list)
    decision: Decision | None = None
    agreement: float | None = None
    repeat: bool = False
    taken: int = 0
    verdict: str = "teacher_only"
    response: litellm.ModelResponse | None = None
    shadow: bool | None = None
    teacher_action: str | None = None
    teacher_text: str | None = None
    """The teacher's answer text on a shadow step the student acted on."""
    student_correct: bool | None = None
    teacher_call: TeacherCall | None = None

    @property
    def actor(self) -> str:
        return "student" if self.verdict in ("student", "student_only") else "teacher"

    @property
    def final(self) -> dict[str, Any]:
        """The message the agent receives."""
        assert self.response is not None
        return self.response.choices[0].message.model_dump()


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Distiller:
    """Wraps an agent's teacher calls; see the module docstring for the modes.

    Args:
        teacher: litellm model string the agent calls (the expensive model).
        student: litellm model string of the cheap model (needed in student/icd/distill).
        mode: teacher | collect | student | icd | distill.
        cascade: sampling, acceptance and shadow settings: a `Cascade`, a dict, or the path
            of a cascade config written by `agentkd calibrate`.
        retrieval: demo retrieval settings (`Retrieval`).
        demos: a demo store folder or `DemoStore` (needed in icd/distill; written in collect).
        log: SQLAlchemy URL or `TrajectoryLog`.
        run: run id in the log; reuse one to resume a run.
        budget: spending / step caps (`Budget`).
        extractor, equivalent: action extraction and equivalence hooks for the gate.
        valid: says whether an action is one the environment can take now (e.g. one of
            ALFWorld's admissible commands); samples it rejects count against agreement,
            so a student unanimous on an impossible action is deferred. None: all valid.
        key: retrieval key function over the raw messages.
        template: demo formatting function.
        teacher_kwargs, student_kwargs: extra litellm kwargs per side (api_base, ...).
        teacher_retries: retries of a failing teacher call (litellm's retry machinery).
        label: free text shown in reports; defaults to the teacher's `register_price` label.
        memory: an `agentkd.memory.Pipeline`; in student modes the agent's long history is
            routed through BudgetMem (query = goal + observation) before the student sees it.
        memory_router: the tier policy: a `agentkd.memory.Router`, a tier name for every
            module ("low" / "mid" / "high") or a {module: tier} mapping.
        first_thought: in teacher/collect mode, seed the teacher's first step of each
            episode with the first paragraph of its own plain chain-of-thought on the task
            (the agent-distillation paper's first-thought prefix; `agentkd.first_thought`).
        grow_demos: in distill mode, add each successful episode's teacher-served steps to
            the store (``"all"``: its accepted student steps too), once per episode, so the
            teacher is needed less as the run goes; `demos` is then created if missing.
    """

    def __init__(
        self,
        teacher: str,
        student: str | None = None,
        *,
        mode: str = "distill",
        cascade: Cascade | dict[str, Any] | str | Path | None = None,
        retrieval: Retrieval | dict[str, Any] | None = None,
        demos: str | Path | DemoStore | None = None,
        log: str | TrajectoryLog = "sqlite:///agentkd.db",
        run: str | None = None,
        budget: Budget | dict[str, Any] | None = None,
        extractor: ActionExtractor = default_extractor,
        equivalent: Equivalence | None = None,
        valid: Validity | None = None,
        key: KeyFunction = default_key,
        template: DemoTemplate = default_template,
        teacher_kwargs: dict[str, Any] | None = None,
        student_kwargs: dict[str, Any] | None = None,
        teacher_retries: int = 2,
        label: str | None = None,
        memory: Any = None,
        memory_router: Any = "mid",
        first_thought: bool = False,
        grow_demos: bool | Literal["teacher", "all"] = False,
    ) -> None:
        self.mode = check_mode(mode)
        if not isinstance(teacher, str) or not teacher:
            raise InputError("teacher must be a litellm model string, e.g. 'openai/gpt-4.1'")
        if self.mode in ("student", "icd", "distill") and not student:
            raise InputError(f"mode {mode!r} needs a student model string (student=...)")
        self.teacher, self.student = teacher, student
        if isinstance(cascade, str | Path):
            cascade = load_cascade(cascade)
        self.cascade: Cascade = validated(Cascade, cascade, "cascade")  # type: ignore[assignment]
        self.retrieval: Retrieval = validated(Retrieval, retrieval, "retrieval")  # type: ignore[assignment]
        self.budget: Budget = validated(Budget, budget, "budget")  # type: ignore[assignment]
        for name, hook in (("equivalent", equivalent), ("valid", valid)):
            if hook is not None and not callable(hook):
                raise InputError(f"{name} must be a function of actions (or None), got "
                                 f"{type(hook).__name__}")
        self.gate = Gate(self.cascade.acceptance, equivalent, valid)
        # Its own generator: drawing shadow steps must not disturb any other randomness.
        self._shadow_draw = random.Random(self.cascade.shadow_seed)
        self.extractor, self.key_fn, self.template = extractor, key, template
        self.teacher_kwargs = dict(teacher_kwargs or {})
        self.student_kwargs = dict(student_kwargs or {})
        if teacher_retries < 0:
            raise InputError("teacher_retries must be >= 0")
        self.teacher_retries = teacher_retries
        self.memory, self.memory_router = memory, memory_router
        if first_thought and self.mode not in ("teacher", "collect"):
            raise InputError("first_thought seeds the teacher's trajectories: use it in mode "
                             f"'collect' or 'teacher', not {self.mode!r}")
        self.first_thought = first_thought
        self.grow_actors = self._grow_actors(grow_demos, demos)
        self.log = log if isinstance(log, TrajectoryLog) else TrajectoryLog(log)
        self.demos = self._open_demos(demos)
        self.run_id = run or f"{self.mode}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.log.ensure_run(
            self.run_id, mode=self.mode, teacher=teacher, label=label or model_label(teacher),
            student=student if self.mode not in ("teacher", "collect") else None,
            config={"cascade": self.cascade.model_dump(), "retrieval": self.retrieval.model_dump(),
                    "budget": self.budget.model_dump(),
                    "demos": str(self.demos.path) if self.demos is not None else None,
                    "grow_demos": sorted(self.grow_actors) if self.grow_actors else None},
        )
        self._run_cost = self.log.run_cost(self.run_id)
        if self.grow_actors is not None and self.demos is not None:
            # Resuming: successful episodes whose demos a crash kept out of the store.
            demos_from_log(self.log, self.run_id, self.demos, actors=self.grow_actors)
        intercept.install()

    def _grow_actors(self, grow_demos: bool | str, demos: object) -> set[str] | None:
        """Whose steps a successful episode adds to the store; None when it adds nothing."""
        if grow_demos is False:
            return None
        if grow_demos not in (True, "teacher", "all"):
            raise InputError(f"grow_demos must be True, 'teacher' or 'all', got {grow_demos!r}")
        if self.mode != "distill":
            raise InputError(f"grow_demos grows a distill run's store; mode {self.mode!r} "
                             "does not (collect mode already turns whole episodes into demos)")
        if demos is None:
            raise InputError("grow_demos needs a store to grow: pass demos='path/to/store' "
                             "(created if missing)")
        return {"teacher", "student"} if grow_demos == "all" else {"teacher"}

    def _open_demos(self, demos: str | Path | DemoStore | None) -> DemoStore | None:
        if isinstance(demos, DemoStore) or demos is None:
            if demos is None and self.mode == "icd":
                raise InputError("mode 'icd' retrieves demos: pass demos='path/to/store' (build "
                                 "one in collect mode or with `agentkd demos build`), or use "
                                 "mode 'student' for the zero-shot student")
            store = demos
        else:
            store = DemoStore.open(demos, create=self.mode == "collect"
                                   or self.grow_actors is not None)
        # Load the store's embedding model now: a store whose model is missing or gives
        # vectors of another size fails here, not at the first step of an episode.
        if (store is not None and len(store) and self.mode in ("icd", "distill")
                and store.embedder.dim != store.dim):
            raise StoreError(
                f"demo store {store.path} holds {store.dim}-d vectors but its embedding "
                f"model {store.embedder.name!r} gives {store.embedder.dim}-d ones; it was "
                f"built with another embedder: rebuild it with `agentkd demos build`")
        return store

    def __repr__(self) -> str:
        return (f"Distiller(teacher={self.teacher!r}, student={self.student!r}, "
                f"mode={self.mode!r}, run={self.run_id!r})")

    # ---- episodes ------------------------------------------------------------------------

    @contextmanager
    def episode_scope(self, task_id: str | None = None, *, goal: str | None = None,
                      plan: str | None = None, task_type: str | None = None
                      ) -> Iterator[EpisodeScope]:
        """Open one logged episode; teacher calls inside it are served by this Distiller."""
        scope = self.open_episode(task_id, goal=goal, plan=plan, task_type=task_type)
        scope._enter()
        try:
            yield scope
        except BaseException as exc:
            self.end_episode(scope, exc)
            raise
        else:
            self.end_episode(scope)
        finally:
            scope._exit()

    def open_episode(self, task_id: str | None = None, *, goal: str | None = None,
                     plan: str | None = None, task_type: str | None = None) -> EpisodeScope:
        """Start one logged episode that outlives a call stack (`agentkd serve` keeps one open
        across HTTP requests): serve its steps with `serve_step`, close it with `end_episode`.
        `episode_scope` is this pair around a block."""
        task_id = str(task_id) if task_id is not None else uuid.uuid4().hex[:12]
        for name, value, limit in (("task_id", task_id, 512), ("task_type", task_type, 128)):
            if value is not None and len(str(value)) > limit:  # PostgreSQL would refuse it
                raise InputError(f"{name} is {len(str(value))} characters long; at most {limit}")
        if self.budget.max_usd_per_run is not None:
            # Other processes may write this run too: start each episode from the log's total.
            self._run_cost = max(self._run_cost, self.log.run_cost(self.run_id))
            self._check_run_budget()
        episode_id = self.log.start_episode(self.run_id, task_id, task_type=task_type,
                                            goal=goal, plan=plan)
        return EpisodeScope(self, self.run_id, episode_id, task_id, goal=goal, plan=plan,
                            task_type=task_type)

    def end_episode(self, scope: EpisodeScope, exc: BaseException | None = None) -> None:
        """Write an episode's outcome: the one `scope.finish` gave, or the status `exc` (what
        ended it early) implies."""
        if exc is None:
            self._close_episode(scope)
            return
        # A run cap stops the run mid-episode: like a kill, a resumed run replays it.
        interrupted = isinstance(exc, KeyboardInterrupt | asyncio.CancelledError) or (
            isinstance(exc, BudgetExceeded) and exc.scope == "run")
        status = "interrupted" if interrupted else "error"
        if isinstance(exc, BudgetExceeded) and exc.scope == "episode":
            status = "budget"
        self.log.finish_episode(
            scope.episode_id, status=status, success=False if not interrupted else None,
            error=f"{type(exc).__name__}: {exc}")

    def _close_episode(self, scope: EpisodeScope) -> None:
        status = {True: "success", False: "failure", None: "done"}[scope.success]
        self.log.finish_episode(scope.episode_id, status=status, success=scope.success,
                                reward=scope.reward, info=scope.info)
        growing = self.mode == "collect" or self.grow_actors is not None
        if growing and scope.success and self.demos is not None:
            episode = self.log.episode(scope.episode_id)
            demo = demo_episode_from_log(self.log, episode, self.grow_actors)
            if demo is not None and demo.source not in self.demos.sources():
                self.demos.add(demo)
                self.demos.flush()

    def episode(self, task_id: Callable[..., Any] | None = None, *,
                success: Callable[[Any], bool] | None = None,
                goal: Callable[..., str] | None = None,
                task_type: Callable[..., str] | None = None) -> Callable[[F], F]:
        """Decorator: each call of the function is one logged episode.

        `task_id`, `goal` and `task_type` are called with the function's arguments;
        `success` with its return value (or call `agentkd.current_episode().finish(...)`).
        """

        def scope_for(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return self.episode_scope(
                task_id(*args, **kwargs) if task_id else None,
                goal=goal(*args, **kwargs) if goal else None,
                task_type=task_type(*args, **kwargs) if task_type else None,
            )

        def settle(scope: EpisodeScope, result: Any) -> None:
            if success is not None and not scope.finished:
                scope.finish(success=bool(success(result)))

        def decorate(fn: F) -> F:
            if inspect.iscoroutinefunction(fn):
                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    with scope_for(args, kwargs) as scope:
                        result = await fn(*args, **kwargs)
                        settle(scope, result)
                        return result
                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with scope_for(args, kwargs) as scope:
                    result = fn(*args, **kwargs)
                    settle(scope, result)
                    return result
            return wrapper  # type: ignore[return-value]

        return decorate

    # ---- the pipeline --------------------------------------------------------------------

    def completion(self, messages: list[dict[str, Any]], **kwargs: Any) -> litellm.ModelResponse:
        """Serve one agent step; returns litellm's response type. Same kwargs as litellm."""
        kwargs.pop("model", None)
        messages = check_messages(messages)
        if kwargs.get("stream"):
            raise InputError("agentkd serves whole responses: call the teacher without "
                             "stream=True inside a Distiller episode")
        scope = current_episode()
        if scope is None or scope.distiller is not self:
            with self.episode_scope() as adhoc:
                return self._step(adhoc, messages, kwargs)
        return self._step(scope, messages, kwargs)

    async def acompletion(self, messages: list[dict[str, Any]],
                          **kwargs: Any) -> litellm.ModelResponse:
        """Async `completion`: runs the step in a worker thread (contextvars carried over)."""
        return await asyncio.to_thread(self.completion, messages, **kwargs)

    def serve_step(self, scope: EpisodeScope, messages: list[dict[str, Any]], *,
                   teacher_call: TeacherCall | None = None,
                   **kwargs: Any) -> litellm.ModelResponse:
        """One step of an episode from `open_episode` (no contextvar scope needed);
        `teacher_call`, when given, makes the teacher's answer (see `TeacherCall`)."""
        kwargs.pop("model", None)
        return self._step(scope, check_messages(messages), kwargs, teacher_call)

    def key_for(self, scope: EpisodeScope, messages: list[dict[str, Any]]) -> StepKey:
        """The retrieval key; the scope's own goal/plan beat the default guesses from messages,
        but a user's key function has the last word."""
        key = self.key_fn(messages)
        if self.key_fn is not default_key:
            return key
        return StepKey(goal=scope.goal or key.goal, plan=scope.plan or key.plan,
                       observation=key.observation)

    def _check_budget(self, scope: EpisodeScope) -> None:
        """Caps are checked before each step: the step that crosses a cap completes (its cost
        is known only afterwards), the next one is refused."""
        b = self.budget
        if b.max_steps_per_episode is not None and scope.steps >= b.max_steps_per_episode:
            raise BudgetExceeded(f"episode {scope.task_id!r} reached its step cap of "
                                 f"{b.max_steps_per_episode} steps; its {scope.steps} steps are "
                                 f"in the log (status 'budget')", scope="episode")
        if b.max_usd_per_episode is not None and scope.cost_usd >= b.max_usd_per_episode:
            raise BudgetExceeded(f"episode {scope.task_id!r} spent ${scope.cost_usd:.6f}, its cap "
                                 f"is ${b.max_usd_per_episode}; its {scope.steps} steps are in "
                                 f"the log (status 'budget')", scope="episode")
        self._check_run_budget()

    def _check_run_budget(self) -> None:
        cap = self.budget.max_usd_per_run
        if cap is not None and self._run_cost >= cap:
            raise BudgetExceeded(f"run {self.run_id!r} spent ${self._run_cost:.6f}, its cap is "
                                 f"${cap}; everything so far is in the log and an episode "
                                 f"cut short is marked 'interrupted' (resume the run with a "
                                 f"higher cap to continue)", scope="run")

    def _step(self, scope: EpisodeScope, messages: list[dict[str, Any]],
              kwargs: dict[str, Any], teacher_call: TeacherCall | None = None
              ) -> litellm.ModelResponse:
        """One step, as DESIGN.md's stages: key, memory, demos, student samples, verdict,
        teacher, shadow label, log."""
        self._check_budget(scope)
        step = _Step(start=time.perf_counter(), turns=scope.new_turns(messages),
                     key=self.key_for(scope, messages), teacher_call=teacher_call)
        if self.mode in ("teacher", "collect"):
            step.verdict = "teacher_only"
        else:
            student_messages = self._with_memory(step, messages)
            self._retrieve_demos(step)
            sampled = self._sample_student(step, student_messages, kwargs)
            self._decide(step, scope, sampled)
        if step.response is None:
            self._teacher_answers(step, scope, messages, kwargs)
        self._label_shadow(step, messages, kwargs)
        return self._record(step, scope)

    def _with_memory(self, step: _Step, messages: list[dict[str, Any]]
                     ) -> list[dict[str, Any]]:
        """The student's view of the history: routed through BudgetMem when configured."""
        if self.memory is None:
            return messages
        from agentkd.memory.integration import compress_history

        compressed, memory_calls = compress_history(
            messages, f"{step.key.goal}\n{step.key.observation}", self.memory,
            self.memory_router)
        step.calls += memory_calls
        return compressed

    def _retrieve_demos(self, step: _Step) -> None:
        """The teacher's most similar steps (none in student mode, or from an empty store:
        a cold start samples zero-shot)."""
        if self.mode in ("icd", "distill") and self.demos is not None and len(self.demos):
            step.windows = self.demos.search(step.key, self.retrieval)
            step.block = self.template(step.windows) if step.windows else ""

    def _sample_student(self, step: _Step, messages: list[dict[str, Any]],
                        kwargs: dict[str, Any]) -> llm.Sampled:
        """N samples in distill mode (one elsewhere), demos placed per `Retrieval.placement`."""
        assert self.student is not None
        n = self.cascade.samples if self.mode == "distill" else 1
        sampled = llm.sample(
            self.student, inject_demos(messages, step.block, self.retrieval.placement), n=n,
            temperature=self.cascade.temperature, role="student",
            use_n={"auto": None, "n": True, "parallel": False}[self.cascade.sampling],
            cache_prefix=self.cascade.cache_prefix,
            **self._student_call_kwargs(kwargs))
        step.calls += [r.record for r in sampled.results]
        step.decision, step.samples = self._judge(sampled, n, _demo_action(step.windows))
        return sampled

    def _decide(self, step: _Step, scope: EpisodeScope, sampled: llm.Sampled) -> None:
        """The verdict: the student acts (its first sample carrying the majority action) or
        the step is deferred to the teacher."""
        decision = step.decision
        assert decision is not None
        # The student's agreed action was already taken on this observation: a loop; or
        # already taken `defer_repeats` times in the episode: circling back to one place.
        step.repeat = (step.key.observation, decision.majority_action) in scope.acted
        step.taken = scope.taken[decision.majority_action] if decision.majority_action else 0
        if not sampled.messages:
            step.verdict = "student_error"
        elif self.mode == "distill":
            step.agreement = decision.agreement
            repeats = self.cascade.defer_repeats
            looping = (self.cascade.defer_loops and step.repeat) or (
                repeats is not None and step.taken >= repeats)
            step.verdict = "student" if decision.accept and not looping else "deferred"
        else:
            step.verdict = "student_only"
        if step.verdict in ("student", "student_only"):
            step.response = self._as_response(sampled.results,
                                              sampled.messages[decision.chosen_index or 0])

    def _teacher_answers(self, step: _Step, scope: EpisodeScope,
                         messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> None:
        """The teacher serves the original messages (seeded with its first thought at the
        first step when configured)."""
        role = "collect" if self.mode == "collect" else "teacher"
        if self.first_thought and scope.steps == 0:
            messages, cot = seed_first_thought(
                self.teacher, messages, {**kwargs, **self.teacher_kwargs}, role=role,
                retries=self.teacher_retries)
            step.calls.append(cot)
        step.response, record = self._ask_teacher(scope, messages, kwargs, role, step)
        step.calls.append(record)

    def _label_shadow(self, step: _Step, messages: list[dict[str, Any]],
                      kwargs: dict[str, Any]) -> None:
        """Shadow: draw the step into the labelled sample whoever acted, so the labels are an
        unbiased sample of all steps; the teacher's answer is only logged, never returned."""
        decision = step.decision
        if decision is None:
            return
        step.shadow = self._shadow_draw.random() < self.cascade.shadow
        if not step.shadow:
            return
        if step.actor == "teacher":
            step.teacher_action = extract_action(step.final, self.extractor)
        else:
            step.teacher_action, step.teacher_text, record = self._shadow_label(messages,
                                                                                kwargs)
            step.calls.append(record)
        if step.teacher_action is None:
            return
        majority = decision.majority_action
        step.student_correct = majority is not None and self.gate.same(majority,
                                                                       step.teacher_action)
        for sample in step.samples:
            action = sample["action"]
            sample["teacher_match"] = (action is not None
                                       and self.gate.same(action, step.teacher_action))

    def _record(self, step: _Step, scope: EpisodeScope) -> litellm.ModelResponse:
        """Write the step with its calls, update the episode's counters, tag the response."""
        prompt_hash, new_turns = step.turns
        final, decision = step.final, step.decision
        record = StepRecord(
            idx=scope.steps, prompt_hash=prompt_hash, new_messages=new_turns,
            observation=step.key.observation, demo_ids=[w.hit_row for w in step.windows],
            demo_block=step.block or None, samples=step.samples, agreement=step.agreement,
            verdict=step.verdict, actor=step.actor,
            final_action=extract_action(final, self.extractor),
            final_text=final.get("content") if isinstance(final.get("content"), str) else None,
            latency_ms=(time.perf_counter() - step.start) * 1000,
            signals=({**decision.signals.as_dict(), "demo_action": _demo_action(step.windows),
                      "repeat": step.repeat, "taken": step.taken}
                     if decision is not None and decision.signals is not None else None),
            shadow=step.shadow, teacher_action=step.teacher_action,
            teacher_text=step.teacher_text,
            student_correct=step.student_correct,
        )
        self.log.record_step(scope.episode_id, self.run_id, record, step.calls)
        if record.final_action is not None:
            scope.acted.add((step.key.observation, record.final_action))
            scope.taken[record.final_action] += 1
        step_cost = sum(c.cost_usd for c in step.calls)
        scope.steps += 1
        scope.cost_usd += step_cost
        self._run_cost += step_cost
        assert step.response is not None
        step.response._hidden_params.setdefault("agentkd", {}).update(
            {"actor": record.actor, "verdict": step.verdict, "agreement": step.agreement,
             "run_id": self.run_id, "episode_id": scope.episode_id, "step": record.idx,
             "signals": record.signals})
        return step.response

    def _student_call_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        call_kwargs = {**kwargs, **self.student_kwargs}
        assert self.student is not None
        wanted = {"on": True, "off": False,
                  "auto": self.cascade.logprobs == "auto" and llm.supports_logprobs(self.student)
                  }[self.cascade.logprobs]
        if wanted:
            call_kwargs.setdefault("logprobs", True)
        return call_kwargs

    def _judge(self, sampled: llm.Sampled, n: int, demo_action: str | None
               ) -> tuple[Decision, list[dict[str, Any]]]:
        """The gate's decision on the samples, and the samples as logged: each with its
        action, equivalence group (None when it carries no valid action), action logprob,
        match with the nearest demo's action (what calibration needs to recompute every
        signal for fewer samples) and whether the validity hook passed it."""
        raw = [self.extractor(m) for m in sampled.messages]
        actions = [canonical_action(r) for r in raw]
        logprobs = [action_logprob(tokens, m.get("content"), r) for m, tokens, r in
                    zip(sampled.messages, sampled.logprobs, raw, strict=True)]
        missing = [None] * (n - len(actions))  # failed samples count against agreement
        decision = self.gate.decide(actions + missing, logprobs + missing, demo_action)
        samples = [{"content": m.get("content"), "tool_calls": m.get("tool_calls"),
                    "action": a, "group": g, "logprob": lp, "demo_match": d, "valid": v}
                   for m, a, g, lp, d, v in zip(sampled.messages, actions, decision.groups,
                                                logprobs, decision.demo_matches,
                                                decision.valid, strict=False)]
        return decision, samples

    def _shadow_label(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]
                      ) -> tuple[str | None, str | None, CallRecord]:
        """Ask the teacher what it would do (role ``shadow``): (its action, its answer text,
        the call). A failure only loses the label."""
        result = llm.complete(self.teacher, messages, role="shadow",
                              retries=self.teacher_retries, **{**kwargs, **self.teacher_kwargs})
        message = result.messages()[0] if result.response is not None else None
        if message is None:
            return None, None, result.record
        content = message.get("content")
        return (extract_action(message, self.extractor),
                content if isinstance(content, str) else None, result.record)

    def _ask_teacher(self, scope: EpisodeScope, messages: list[dict[str, Any]],
                     kwargs: dict[str, Any], role: str, step: _Step
                     ) -> tuple[litellm.ModelResponse, CallRecord]:
        call_kwargs = {**kwargs, **self.teacher_kwargs}
        if step.teacher_call is not None:
            result = step.teacher_call(messages, call_kwargs, role, step.verdict)
        else:
            result = llm.complete(self.teacher, messages, role=role,
                                  retries=self.teacher_retries, **call_kwargs)
        if result.response is None:
            # Keep what this step already spent (student samples) and the failed call.
            spent = [*step.calls, result.record]
            self.log.record_calls(self.run_id, scope.episode_id, spent)
            scope.cost_usd += sum(c.cost_usd for c in spent)
            self._run_cost += sum(c.cost_usd for c in spent)
            raise TeacherError(
                f"teacher {self.teacher!r} failed after {self.teacher_retries} retries: "
                f"{(result.record.error or '').splitlines()[0]} (full error in the log)")
        return result.response, result.record

    def _as_response(self, results: list[llm.CallResult],
                     chosen: dict[str, Any]) -> litellm.ModelResponse:
        """A response carrying only the chosen sample, shaped like the teacher's would be."""
        for result in results:
            if result.response is None:
                continue
            for choice in result.response.choices:
                if choice.message.model_dump() == chosen:
                    response = result.response.model_copy(deep=True)
                    picked = choice.model_copy(deep=True)
                    picked.index = 0
                    picked.finish_reason = picked.finish_reason or "stop"
                    response.choices = [picked]
                    response.model = self.teacher
                    return response
        raise AssertionError("the chosen sample is not among the responses")  # unreachable

    # ---- reporting -----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """This run's report row (see `agentkd.report`)."""
        from agentkd.report import run_summaries

        return run_summaries(self.log, run_ids=[self.run_id])[0].model_dump()

    def close(self) -> None:
        if self.demos is not None:
            self.demos.flush()
