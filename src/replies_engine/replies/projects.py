"""What a company tells its AI, and how much of it they pay for.

Instructions: a conversation record's own `ai_instructions`, else those of its `project_id` in
PROJECTS_FILE, else the default prompt. Caps on the AI's replies per UTC day, to a conversation
(MAX_AI_TURNS_PER_DAY) and in a project (the file's `max_ai_turns_per_day`), 0 meaning no cap: past
either, a human gets the conversation with the reason, and no AI is asked. A reply counts once it is
made (its note written), so a failed attempt, a retry or a regeneration costs no turn.

PROJECTS_FILE is JSON, read once per process and checked then (a bad one is a CONFIGURATION_ERROR):
    {"acme": {"ai_instructions": "You are Acme's assistant. …", "max_ai_turns_per_day": 5000,
              "handoff_reply_text": "Thanks! Someone from Acme will answer you here today."}}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .. import clock
from ..config import ConfigurationError

if TYPE_CHECKING:
    from ..ports import Runtime

_FIELDS = {"ai_instructions": str, "max_ai_turns_per_day": int, "handoff_reply_text": str}


def load(path: str | None) -> dict[str, dict[str, Any]]:
    """PROJECTS_FILE's projects by id ({} without one)."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as file:
            projects = json.load(file)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"PROJECTS_FILE={path!r} cannot be read as JSON: {exc}") from None
    if not isinstance(projects, dict):
        raise ConfigurationError(f"PROJECTS_FILE={path!r} must hold an object of projects by id")
    for project_id, project in projects.items():
        if not isinstance(project, dict):
            raise ConfigurationError(f"PROJECTS_FILE: project {project_id!r} must be an object")
        for name, value in project.items():
            kind = _FIELDS.get(name)
            if kind is None:
                raise ConfigurationError(
                    f"PROJECTS_FILE: project {project_id!r} has {name!r}; known: {', '.join(_FIELDS)}"
                )
            if (
                not isinstance(value, kind)
                or isinstance(value, bool)
                or (isinstance(value, int) and value < 0)
            ):
                raise ConfigurationError(
                    f"PROJECTS_FILE: project {project_id!r}: {name} must be a {'whole number ≥ 0' if kind is int else 'string'}"
                )
    return projects


def instructions(runtime: Runtime, record: dict[str, Any]) -> str | None:
    """The system prompt the company wrote for this conversation, if any."""
    own = record.get("ai_instructions")
    if isinstance(own, str) and own.strip():
        return own.strip()
    return runtime.projects.get(record.get("project_id") or "", {}).get("ai_instructions") or None


def over_cap(runtime: Runtime, record: dict[str, Any]) -> str | None:
    """The reason a human should answer instead of the AI, when today's replies reached a cap."""
    cap = runtime.settings.max_ai_turns_per_day
    if cap and replies_today(record) >= cap:
        return f"the AI answered this conversation {cap} times today (MAX_AI_TURNS_PER_DAY)"
    project_id, project_cap = _project_cap(runtime, record)
    if project_cap and runtime.store.turns(f"project#{project_id}", _today()) >= project_cap:
        return f"the AI answered {project_cap} times today in project {project_id} (its max_ai_turns_per_day)"
    return None


def replies_today(record: dict[str, Any]) -> int:
    """The AI's replies in this conversation today (`ai_replies`, of the day `ai_replies_day`)."""
    return record.get("ai_replies", 0) if record.get("ai_replies_day") == _today() else 0


def one_more_reply(record: dict[str, Any]) -> dict[str, Any]:
    """The record's changes that count one more AI reply today: written with the reply's note, under
    the lock, so that no request is added for it."""
    return {"ai_replies_day": _today(), "ai_replies": replies_today(record) + 1}


def count_project_reply(runtime: Runtime, record: dict[str, Any]) -> None:
    """One more AI reply in the record's project today, when the project has a cap: one atomic request,
    so that its conversations' replies made at once each count."""
    project_id, cap = _project_cap(runtime, record)
    if cap:
        runtime.store.count_turn(f"project#{project_id}", _today())


def _project_cap(runtime: Runtime, record: dict[str, Any]) -> tuple[str | None, int | None]:
    project_id = record.get("project_id")
    return project_id, runtime.projects.get(project_id or "", {}).get("max_ai_turns_per_day")


def _today() -> str:
    return clock.iso()[:10]
