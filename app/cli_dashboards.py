"""``hostcp dashboards ...``: read-only database roles for BI tools (docs/dashboards.md).

    hostcp dashboards grant --key NAME --role ROLE [--password PW | --password-env VAR]
    hostcp dashboards revoke --role ROLE [--key NAME] [--drop-role]
    hostcp dashboards list [--role ROLE]
    hostcp dashboards views

``register(subparsers)`` adds the group to a CLI; every command sets ``func``, and
``args.func(args)`` returns the exit status (2: refused, with the reason on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("dashboards", help="read-only database roles for dashboards "
                              "(Postgres): which API keys' rows each may read")
    cmds = p.add_subparsers(dest="dashboards_command", required=True)

    g = cmds.add_parser("grant", help="let ROLE read the reporting views, limited to the rows "
                        "of the API keys named (or prefixed) NAME; creates ROLE (LOGIN) if new")
    g.add_argument("--key", required=True, action="append", metavar="NAME",
                   help="API key name or prefix (repeat for several)")
    g.add_argument("--role", required=True, help="database role the dashboard connects as")
    pw = g.add_mutually_exclusive_group()
    pw.add_argument("--password", default=None,
                    help="set the role's password (visible in the process list; prefer "
                    "--password-env)")
    pw.add_argument("--password-env", default=None, metavar="VAR",
                    help="set the role's password from this environment variable")
    g.set_defaults(func=cmd_grant)

    r = cmds.add_parser("revoke", help="take back ROLE's access to NAME's rows (or to all); "
                        "with no key left its privileges on the views go too")
    r.add_argument("--role", required=True)
    r.add_argument("--key", default=None, metavar="NAME", help="default: every key of ROLE")
    r.add_argument("--drop-role", action="store_true",
                   help="also drop the role once it has no key left")
    r.set_defaults(func=cmd_revoke)

    s = cmds.add_parser("list", help="which role may read which API key's rows")
    s.add_argument("--role", default=None)
    s.set_defaults(func=cmd_list)

    v = cmds.add_parser("views", help="the reporting views in the configured database")
    v.set_defaults(func=cmd_views)


def _settings():
    from app.core.config import get_settings

    return get_settings()


def _refused(exc: Exception) -> int:
    print(f"hostcp dashboards: {exc}", file=sys.stderr)
    return 2


def cmd_grant(args: argparse.Namespace) -> int:
    from app.db.reporting import ReportingError, grant

    password = args.password
    if args.password_env is not None:
        password = os.environ.get(args.password_env)
        if not password:
            return _refused(ValueError(f"${args.password_env} is not set"))
    try:
        res = grant(_settings(), key=args.key, role=args.role, password=password)
    except ReportingError as exc:
        return _refused(exc)
    if res.role_created:
        print(f"created role {args.role!r} (LOGIN"
              f"{', with a password' if password else ', no password set'})", file=sys.stderr)
    for row in res.keys:
        print(f"{res.role}\t{row.key_name}\t{row.key_prefix}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from app.db.reporting import ReportingError, revoke

    try:
        n = revoke(_settings(), role=args.role, key=args.key, drop_role=args.drop_role)
    except ReportingError as exc:
        return _refused(exc)
    print(f"removed {n} key grant(s) from role {args.role!r}"
          + ("; the role no longer exists" if args.drop_role else ""), file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from app.db.reporting import list_grants

    print("role\tkey_name\tkey_prefix\tgranted_at")
    for row in list_grants(_settings(), role=args.role):
        print(f"{row.role}\t{row.key_name}\t{row.key_prefix}\t{row.created_at.isoformat()}")
    return 0


def cmd_views(args: argparse.Namespace) -> int:
    from app.db.reporting import existing_views, view_name
    from app.db.session import get_engine

    engine = get_engine(_settings())
    with engine.connect() as conn:
        names = existing_views(conn)
    if not names:
        return _refused(RuntimeError("no reporting views: run `hostcp migrate` first"))
    for name in names:
        print(view_name(name, engine.dialect.name))
    return 0
