"""`replies-engine`: the engine on one machine, and the operators' tools.

Every command acts on the configured backend (REPLIES_BACKEND: sqlite, the default, or aws) and prints
JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from .. import clock, people
from .. import operators as operators_
from ..bootstrap import get_runtime
from ..channels import CHANNELS, QUEUES, normalize_record_keys
from ..config import ConfigurationError
from ..handlers import stalled_sweeper
from ..operators import AGENT, ROLES
from ..ports import BackendError, QueuedMessage

logger = logging.getLogger("replies_engine.cli")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("replies-engine")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


class UsageError(Exception):
    """Bad input from the person at the keyboard: printed, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is not _serve:  # start-up warnings are for the serving process, not each command
        logging.getLogger("replies_engine.bootstrap").setLevel(logging.ERROR)
    try:
        result = args.command(args)
    except (UsageError, operators_.OperatorsError, people.AddressError) as exc:
        print(f"replies-engine: {exc}", file=sys.stderr)
        return 2
    except (ConfigurationError, BackendError) as exc:
        print(f"replies-engine: {exc}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _parser() -> argparse.ArgumentParser:
    # `--json` is accepted everywhere, before or after the command: output is always JSON.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON (always)")
    parser = argparse.ArgumentParser(prog="replies-engine", description=__doc__, parents=[common])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def add_parser(subparsers, name, **kwargs):
        return subparsers.add_parser(name, parents=[common], **kwargs)

    serve = add_parser(commands, "serve", help="run the whole engine on this machine")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    consume = serve.add_mutually_exclusive_group()
    consume.add_argument(
        "--inbox-only",
        dest="workers",
        action="store_false",
        default=None,
        help="serve the webhooks, the inbox and its API, but consume no queue (the default with REPLIES_BACKEND=aws)",
    )
    consume.add_argument(
        "--workers",
        dest="workers",
        action="store_true",
        help="also run the queue workers and the sweeper (the default with the embedded backend)",
    )
    serve.set_defaults(command=_serve)

    conversations = add_parser(commands, "conversations", help="ConversationsTable records").add_subparsers(
        required=True, metavar="ACTION"
    )
    imp = add_parser(conversations, "import", help="import records: a JSON array or JSON lines; - for stdin")
    imp.add_argument("file")
    imp.set_defaults(command=_import)
    show = add_parser(conversations, "show", help="print one record")
    show.add_argument("conversation_id")
    show.set_defaults(command=_show)
    lst = add_parser(conversations, "list", help="print records, optionally by conversation_status")
    lst.add_argument("--status")
    lst.set_defaults(command=_list)

    queues = add_parser(commands, "queues", help="look into the queues").add_subparsers(
        required=True, metavar="ACTION"
    )
    peek = add_parser(queues, "peek", help="the messages of a queue, without consuming them")
    peek.add_argument("name", help="whatsapp, sms, email, handoff, ai, or NAME-dlq")
    peek.set_defaults(command=_peek)
    add_parser(queues, "stats", help="message counts per queue").set_defaults(command=_stats)

    dlq = add_parser(commands, "dlq", help="dead-letter queues").add_subparsers(
        required=True, metavar="ACTION"
    )
    dlq_list = add_parser(dlq, "list", help="the messages of NAME-dlq")
    dlq_list.add_argument("name", help="whatsapp, sms, email, handoff or ai")
    dlq_list.set_defaults(command=_dlq_list)
    redrive = add_parser(dlq, "redrive", help="move the messages of NAME-dlq back to NAME")
    redrive.add_argument("name")
    redrive.set_defaults(command=_dlq_redrive)

    outbox = add_parser(commands, "outbox", help="replies kept by the engine").add_subparsers(
        required=True, metavar="ACTION"
    )
    outbox_list = add_parser(outbox, "list", help="every reply in the outbox")
    outbox_list.set_defaults(command=lambda args: get_runtime().outbox.list())

    operators = add_parser(commands, "operators", help="the inbox's operators' accounts").add_subparsers(
        required=True, metavar="ACTION"
    )
    op_add = add_parser(operators, "add", help="a new account; prints its token, shown this once")
    op_add.add_argument("name")
    op_add.add_argument("--role", choices=ROLES, default=AGENT, help="agent (default) or admin")
    op_add.set_defaults(command=lambda args: operators_.add(get_runtime(), args.name, args.role))
    op_reset = add_parser(operators, "reset", help="a new token for NAME; the old one and its sessions end")
    op_reset.add_argument("name")
    op_reset.set_defaults(command=lambda args: operators_.reset(get_runtime(), args.name))
    op_remove = add_parser(operators, "remove", help="remove NAME: its token and sessions end at once")
    op_remove.add_argument("name")
    op_remove.set_defaults(command=lambda args: operators_.remove(get_runtime(), args.name))
    add_parser(operators, "list", help="every account (never a token)").set_defaults(
        command=lambda args: operators_.accounts(get_runtime())
    )

    person = add_parser(commands, "people", help="a person's data: export it, erase it").add_subparsers(
        required=True, metavar="ACTION"
    )
    person_export = add_parser(person, "export", help="everything held about the person at ADDRESS, as JSON")
    person_export.add_argument("address", help="a phone number, a WhatsApp BSUID or an email address")
    person_export.set_defaults(command=lambda args: people.export(get_runtime(), args.address))
    person_erase = add_parser(person, "erase", help="erase the person's data; prints what went")
    person_erase.add_argument("address", help="a phone number, a WhatsApp BSUID or an email address")
    person_erase.add_argument("--dry-run", action="store_true", help="count what would go, erase nothing")
    person_erase.set_defaults(
        command=lambda args: people.erase(get_runtime(), args.address, dry_run=args.dry_run)
    )

    migrate = add_parser(commands, "migrate", help="move messages out of records an older engine wrote")
    migrate.set_defaults(command=_migrate)

    sweep = add_parser(commands, "sweep", help="reset stalled locks now")
    sweep.set_defaults(command=lambda args: stalled_sweeper({"source": "cli"}, None))

    send = add_parser(commands, "send", help="post a signed inbound message to a running engine")
    send.add_argument("texts", nargs="+", metavar="TEXT", help="one message each, posted one after another")
    send.add_argument("--channel", choices=sorted(CHANNELS), default="whatsapp")
    send.add_argument("--from", dest="sender", required=True, help="the person: +49…, or an email address")
    send.add_argument("--to", dest="recipient", required=True, help="the company: +1…, or an email address")
    send.add_argument("--url", default="http://127.0.0.1:8080", help="the engine's base URL")
    send.add_argument("--message-id", help="the provider's message id (default: a new one)")
    send.set_defaults(command=_send)

    return parser


def _serve(args: argparse.Namespace) -> None:
    from .engine import serve

    serve(args.host, args.port, workers=args.workers)


def _import(args: argparse.Namespace) -> dict[str, Any]:
    records = _read_records(sys.stdin.read() if args.file == "-" else _read_file(args.file))
    try:
        normalized = [normalize_record_keys(record) for record in records]
    except ValueError as exc:
        raise UsageError(f"{exc}; nothing imported") from None
    store = get_runtime().store
    for record in normalized:
        store.put(record)
    return {"imported": len(records)}


def _show(args: argparse.Namespace) -> dict[str, Any]:
    store = get_runtime().store
    record = store.get(args.conversation_id)
    if record is None:
        raise UsageError(f"no conversation {args.conversation_id!r}")
    return {**record, "messages": store.messages(args.conversation_id)}


def _migrate(args: argparse.Namespace) -> dict[str, Any]:
    runtime = get_runtime()
    return {"backend": runtime.settings.backend, **runtime.store.migrate()}


def _list(args: argparse.Namespace) -> list[dict[str, Any]]:
    return get_runtime().store.list(args.status)


def _peek(args: argparse.Namespace) -> list[dict[str, Any]]:
    runtime = get_runtime()
    if not runtime.queue.has_queue(args.name):
        raise UsageError(f"no queue named {args.name!r}: whatsapp, sms, email, handoff, ai, or NAME-dlq")
    return [queued_message_json(m) for m in runtime.queue.peek(args.name)]


def _stats(args: argparse.Namespace) -> dict[str, Any]:
    return get_runtime().queue.stats()


def _dlq_name(name: str) -> str:
    name = name.removesuffix("-dlq")
    if name not in QUEUES:
        raise UsageError(f"no queue named {name!r}: {', '.join(QUEUES)}")
    return name


def _dlq_list(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [queued_message_json(m) for m in get_runtime().queue.peek(f"{_dlq_name(args.name)}-dlq")]


def _dlq_redrive(args: argparse.Namespace) -> dict[str, Any]:
    name = _dlq_name(args.name)
    return {"queue": name, "redriven": get_runtime().queue.redrive(name)}


def _send(args: argparse.Namespace) -> dict[str, Any] | list[dict[str, Any]]:
    from .send import post_inbound

    if args.message_id and len(args.texts) > 1:
        raise UsageError("--message-id names one message; give one TEXT with it")
    runtime = get_runtime()
    responses = [
        post_inbound(runtime, args.channel, args.sender, args.recipient, text, args.url, args.message_id)
        for text in args.texts
    ]
    if any(r["status"] >= 400 or r.get("error_code") for r in responses):  # refused: said, and exit 1
        print(json.dumps(responses, indent=2, ensure_ascii=False))
        raise SystemExit(1)
    return responses[0] if len(responses) == 1 else responses


def queued_message_json(message: QueuedMessage) -> dict[str, Any]:
    try:
        body: Any = json.loads(message.body)
    except json.JSONDecodeError:
        body = message.body
    return {
        "body": body,
        "attributes": message.attributes,
        "visible_at": clock.iso(message.visible_at),
        "message_id": message.message_id,
        "sent_at": clock.iso(message.sent_at),
        "receive_count": message.receive_count,
    }


def _read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def _read_records(text: str) -> list[dict[str, Any]]:
    """A JSON array of records, or one record per line (JSON lines); each needs a conversation_id."""
    stripped = text.strip()
    try:
        if stripped.startswith("["):
            records = json.loads(stripped)
        else:
            records = [json.loads(line) for line in stripped.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise UsageError(f"not a JSON array or JSON lines: {exc}") from None
    for number, record in enumerate(records, 1):
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("conversation_id"), str)
            or not record["conversation_id"]
        ):
            raise UsageError(
                f"record {number} is not an object with a string conversation_id; nothing imported"
            )
        messages = record.get("messages", [])
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise UsageError(f"record {number}: messages must be a list of objects; nothing imported")
    return records


if __name__ == "__main__":
    sys.exit(main())
