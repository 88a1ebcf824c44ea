"""What a company tells its AI, and how much of it they pay for (issue 12).

Instructions: a conversation record's own `ai_instructions`, else those of its `project_id` in
PROJECTS_FILE, else the default prompt. Caps: each AI turn counts for the conversation
(MAX_AI_TURNS_PER_DAY) and for its project (the file's `max_ai_turns_per_day`), per UTC day; past
either, a human gets the conversation with the reason, and no AI is asked.

PROJECTS_FILE is JSON, read once per process and checked then (a bad one is a CONFIGURATION_ERROR):
    {"acme": {"ai_instructions": "You are Acme's assistant. …", "max_ai_turns_per_day": 5000}}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .. import clock
from ..config import ConfigurationError

if TYPE_CHECKING:
    from ..bootstrap import Runtime

_FIELDS = {"ai_instructions": str, "max_ai_turns_per_day": int}


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
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
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
    """Count this AI turn; the reason a human should answer instead when it is one over a daily cap."""
    day = clock.iso()[:10]
    cap = runtime.settings.max_ai_turns_per_day
    if cap and runtime.store.count_turn(f"conversation#{record['conversation_id']}", day) > cap:
        return f"the AI answered this conversation {cap} times today (MAX_AI_TURNS_PER_DAY)"
    project_id = record.get("project_id")
    cap = runtime.projects.get(project_id or "", {}).get("max_ai_turns_per_day")
    if cap is not None and runtime.store.count_turn(f"project#{project_id}", day) > cap:
        return f"the AI answered project {project_id} {cap} times today (its max_ai_turns_per_day)"
    return None
