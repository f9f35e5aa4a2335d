"""``python -m bot.operator``: the operator's rules for the whole bot, from a shell.

Guild moderators manage their own server with slash commands. The operator (whoever runs the
bot) manages rules that apply everywhere, direct messages included: a global ban list, blocked
terms and blocked concepts. They are stored like a guild's rules under ``db.GLOBAL_SCOPE`` and
take effect at once, in the running bot too (rules are read for every prompt).

    python -m bot.operator ban 123456789012345678 --reason "spam"
    python -m bot.operator unban 123456789012345678
    python -m bot.operator block-term "some phrase" [--substring]
    python -m bot.operator unblock-term "some phrase"
    python -m bot.operator block-concept "graphic violence"
    python -m bot.operator unblock-concept "graphic violence"
    python -m bot.operator list

The database is ``--db`` or ``IMAGINE_DB`` (default ``data/imagine.db``). A blocked concept is
stored without an embedding (no model is loaded here); the bot embeds it with its CLIP model
the first time it checks a prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import db
from bot.moderation.normalize import normalize_term
from bot.moderation.terms import BlockedTerm as MatchTerm

# Stored as a concept's model until the bot embeds it (any name but the bot's model works).
UNEMBEDDED = "unembedded"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bot.operator", description=__doc__.split("\n")[0])
    p.add_argument("--db", default=os.environ.get("IMAGINE_DB", "data/imagine.db"))
    sub = p.add_subparsers(dest="action", required=True)
    ban = sub.add_parser("ban", help="ban a Discord user from the whole bot")
    ban.add_argument("user_id", type=int)
    ban.add_argument("--reason")
    sub.add_parser("unban", help="lift a global ban").add_argument("user_id", type=int)
    term = sub.add_parser("block-term", help="block a word or phrase everywhere")
    term.add_argument("term")
    term.add_argument("--substring", action="store_true", help="also inside longer words")
    sub.add_parser("unblock-term", help="unblock a global term").add_argument("term")
    sub.add_parser("block-concept", help="block a subject everywhere").add_argument("text")
    sub.add_parser("unblock-concept", help="unblock a global concept").add_argument("text")
    sub.add_parser("list", help="show the global rules")
    return p


async def run(args: argparse.Namespace) -> str:
    conn = await db.connect(args.db)
    scope = db.GLOBAL_SCOPE
    try:
        if args.action == "ban":
            await db.ban_user(conn, scope, args.user_id, actor_id=None, reason=args.reason)
            cancelled = await db.cancel_user_jobs(conn, None, args.user_id)
            return (
                f"banned {args.user_id} everywhere ({len(cancelled)} waiting DM job(s) cancelled)"
            )
        if args.action == "unban":
            done = await db.unban_user(conn, scope, args.user_id, actor_id=None)
            return f"unbanned {args.user_id}" if done else f"{args.user_id} was not banned"
        if args.action == "block-term":
            mode = "substring" if args.substring else "word"
            normalized = MatchTerm(args.term, mode).normalized
            await db.add_blocked_term(
                conn, scope, args.term.strip(), normalized, match_mode=mode, actor_id=None
            )
            return f"blocked {args.term!r} everywhere ({mode})"
        if args.action == "unblock-term":
            removed = await db.remove_blocked_term(
                conn, scope, normalize_term(args.term), actor_id=None
            )
            return f"unblocked {args.term!r}" if removed else f"{args.term!r} was not blocked"
        if args.action == "block-concept":
            await db.add_blocked_concept(conn, scope, args.text, [0.0], UNEMBEDDED, actor_id=None)
            return (
                f"blocked the concept {args.text!r} everywhere (embedded by the bot on first use)"
            )
        if args.action == "unblock-concept":
            removed = await db.remove_blocked_concept(conn, scope, args.text, actor_id=None)
            return f"unblocked {args.text!r}" if removed else f"{args.text!r} was not blocked"
        bans = await db.list_bans(conn, scope)
        terms = await db.list_blocked_terms(conn, scope)
        concepts = await db.list_blocked_concepts(conn, scope)
        lines = [f"banned: {', '.join(str(b.user_id) for b in bans) or 'nobody'}"]
        lines.append(f"terms: {', '.join(f'{t.term} ({t.match_mode})' for t in terms) or 'none'}")
        lines.append(f"concepts: {', '.join(c.text for c in concepts) or 'none'}")
        return "\n".join(lines)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        print(asyncio.run(run(args)))
    except (ValueError, db.DatabaseError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
