"""Dashboards' read model: the reporting views, and the read-only roles allowed to see them.

The views (created by Alembic revision 0004; columns in docs/dashboards.md) live in the schema
``reporting`` on Postgres and are named ``reporting_<view>`` on SQLite. On Postgres each view
shows only the rows of the API keys granted (``dashboard_grants``) to a role the reader has the
privileges of; the owner of the tables (the service) and superusers see every row.

Why this design: the views run with their owner's rights, so a reader needs no privilege on
the base tables at all (granting those, even under row-level security, would let it read them
directly); the filter is on ``current_user``, which a view does not change; ``security_barrier``
stops a reader's own functions (it may create temporary ones) from seeing rows before the
filter has run. The service's connection is untouched: base tables have no policies.

A grant makes the role (LOGIN, no other attributes) when it does not exist, lets it use the
schema and SELECT every view in it (also views a later migration adds, by default privileges of
the granting user), and records which keys it may see. A role that can already read a base
table is refused: it would not be read-only, nor limited to its keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, select, text
from sqlalchemy.exc import DBAPIError

from app.core.config import Settings
from app.db.models import ApiKey, Base, DashboardGrant
from app.db.session import get_engine
from app.db.types import utcnow

SCHEMA = "reporting"
SQLITE_PREFIX = "reporting_"
# the views of the current read model; older versions stay beside newer ones
VIEWS: tuple[str, ...] = ("jobs_v1", "points_v1", "mislabels_v1", "curves_v1", "comparison_v1")
# every table the service owns (also tables added later): a dashboard role must hold no
# privilege on any of them
BASE_TABLES: tuple[str, ...] = (*sorted(Base.metadata.tables), "alembic_version")
_ROLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ReportingError(RuntimeError):
    """A grant or revoke that cannot be done (SQLite, unknown key, unsafe role...)."""


@dataclass(frozen=True)
class GrantRow:
    role: str
    key_id: int
    key_name: str
    key_prefix: str
    created_at: datetime


@dataclass(frozen=True)
class GrantResult:
    role: str
    role_created: bool
    keys: list[GrantRow]


def view_name(view: str, dialect: str) -> str:
    """How SQL names a view on this dialect: ``reporting.jobs_v1`` or ``reporting_jobs_v1``."""
    return f"{SCHEMA}.{view}" if dialect == "postgresql" else f"{SQLITE_PREFIX}{view}"


def existing_views(conn: Connection) -> list[str]:
    """The reporting views present in the database (unprefixed names, sorted)."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(text("SELECT viewname FROM pg_catalog.pg_views "
                                 "WHERE schemaname = :s"), {"s": SCHEMA})
        return sorted(r[0] for r in rows)
    rows = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'view'"))
    return sorted(r[0][len(SQLITE_PREFIX):] for r in rows if r[0].startswith(SQLITE_PREFIX))


@contextmanager
def suspend_views(conn: Connection) -> Iterator[None]:
    """For a migration that batch-alters a table behind the views on SQLite.

    SQLite's batch mode copies the table, drops it and renames the copy, and the rename fails
    ("error in view reporting_...: no such table") while a view names the dropped table. This
    drops the reporting views and re-creates them from their stored SQL afterwards. Postgres
    alters tables in place: nothing to do (dropping a column a view reads fails there, on
    purpose: that change needs a new view version).

    Foreign keys must be off on the connection (set before its transaction begins): the
    rebuild DROPs the old table, and with them on SQLite's implicit DELETE cascades, so
    rebuilding ``jobs`` would delete every job's points and curves. Refused otherwise."""
    if conn.dialect.name != "sqlite":
        yield
        return
    if conn.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise ReportingError("PRAGMA foreign_keys is on: a batch rebuild of a table behind the "
                             "views would cascade-delete its child rows; migrate with foreign "
                             "keys off (set before the transaction begins)")
    rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'view' "
                             "AND name LIKE 'reporting\\_%' ESCAPE '\\'")).all()
    for name, _ in rows:
        conn.execute(text(f'DROP VIEW "{name}"'))
    yield
    for _, sql in rows:
        conn.exec_driver_sql(sql)  # the stored text verbatim (no bind-parameter parsing)


def _require_postgres(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":
        raise ReportingError("database roles exist on Postgres only; on SQLite the "
                             f"{SQLITE_PREFIX}* views show every key's rows to whoever can "
                             "open the file")
    if SCHEMA not in _schemas(conn):
        raise ReportingError(f"no schema {SCHEMA!r}: run `hostcp migrate` first")


def _schemas(conn: Connection) -> set[str]:
    return {r[0] for r in conn.execute(text("SELECT nspname FROM pg_catalog.pg_namespace"))}


def _check_role_name(role: str) -> None:
    if not _ROLE_NAME.match(role):
        raise ReportingError(f"role name {role!r}: use letters, digits and _ (at most 63, not "
                             "starting with a digit)")


def _database(conn: Connection) -> str:
    return conn.execute(text("SELECT current_database()")).scalar_one()


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def _find_keys(conn: Connection, key: str) -> list[ApiKey]:
    """Every API key named ``key``, or the one whose public prefix is ``key``."""
    rows = conn.execute(select(ApiKey.id, ApiKey.name, ApiKey.prefix)
                        .where((ApiKey.name == key) | (ApiKey.prefix == key))
                        .order_by(ApiKey.id)).all()
    if not rows:
        raise ReportingError(f"no API key named {key!r} (nor with that prefix)")
    return rows


def _role_exists(conn: Connection, role: str) -> bool:
    return conn.execute(text("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = :r"),
                        {"r": role}).first() is not None


def _unsafe_reasons(conn: Connection, role: str) -> list[str]:
    """Why an existing role cannot be a read-only dashboard role (empty: it can)."""
    attrs = conn.execute(text("SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb "
                              "FROM pg_catalog.pg_roles WHERE rolname = :r"), {"r": role}).one()
    reasons = [name for name, on in zip(("SUPERUSER", "BYPASSRLS", "CREATEROLE", "CREATEDB"),
                                        attrs, strict=True) if on]
    owner = conn.execute(text("SELECT c.relowner FROM pg_catalog.pg_class c "
                              "WHERE c.oid = 'jobs'::regclass")).scalar_one()
    if conn.execute(text("SELECT pg_catalog.pg_has_role(:r, CAST(:o AS oid), 'USAGE')"),
                    {"r": role, "o": owner}).scalar_one():
        reasons.append("it has the privileges of the tables' owner")
    schema = conn.execute(text("SELECT c.relnamespace::regnamespace::text FROM "
                               "pg_catalog.pg_class c WHERE c.oid = 'jobs'::regclass")
                          ).scalar_one()
    if conn.execute(text("SELECT has_schema_privilege(:r, :s, 'CREATE')"),
                    {"r": role, "s": schema}).scalar_one():
        reasons.append(f"CREATE on schema {schema} (Postgres before 15 gives it to PUBLIC: "
                       f"REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC)")
    for table in BASE_TABLES:
        exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar_one()
        if exists is None:
            continue
        privs = [p for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
                 if conn.execute(text("SELECT has_table_privilege(:r, CAST(:t AS regclass), :p)"),
                                 {"r": role, "t": table, "p": p}).scalar_one()]
        if privs:
            reasons.append(f"{'/'.join(privs)} on table {table}")
    return reasons


def _password_sql(conn: Connection, password: str) -> str:
    # DDL takes no bind parameters: quote the literal with the driver's own quoting
    from psycopg import sql

    return sql.Literal(password).as_string(conn.connection.driver_connection)


def grant(settings: Settings, *, key: str | Sequence[str], role: str,
          password: str | None = None) -> GrantResult:
    """Let ``role`` read the reporting views, limited to the rows of the API keys named (or
    prefixed) ``key`` (one or several); creates the role (LOGIN) when it does not exist.
    Idempotent; all or nothing (one transaction)."""
    _check_role_name(role)
    names = [key] if isinstance(key, str) else list(key)
    with get_engine(settings).begin() as conn:
        _require_postgres(conn)
        keys = [k for name in names for k in _find_keys(conn, name)]
        q = _quote(conn, role)
        created = not _role_exists(conn, role)
        if created:
            conn.execute(text(f"CREATE ROLE {q} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                              "NOREPLICATION NOBYPASSRLS"))
        # also for a new role: it gets whatever PUBLIC has
        reasons = _unsafe_reasons(conn, role)
        if reasons:  # raising rolls back the CREATE ROLE too
            raise ReportingError(f"role {role!r} is not fit to be a read-only dashboard "
                                 f"role: {'; '.join(reasons)}")
        if password is not None:
            conn.execute(text(f"ALTER ROLE {q} PASSWORD {_password_sql(conn, password)}"))
        # PUBLIC normally has CONNECT; a hardened server may have taken it away
        conn.execute(text(f"GRANT CONNECT ON DATABASE {_quote(conn, _database(conn))} TO {q}"))
        conn.execute(text(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {q}"))
        conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {q}"))
        # views a later migration adds (created by this same user) are readable too
        conn.execute(text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} "
                          f"GRANT SELECT ON TABLES TO {q}"))
        have = set(conn.execute(select(DashboardGrant.key_id)
                                .where(DashboardGrant.role_name == role)).scalars())
        now = utcnow()
        for k in keys:
            if k.id not in have:
                conn.execute(DashboardGrant.__table__.insert().values(
                    role_name=role, key_id=k.id, created_at=now))
        granted = _grants(conn, role)
    return GrantResult(role=role, role_created=created,
                       keys=[g for g in granted if g.key_id in {k.id for k in keys}])


def revoke(settings: Settings, *, role: str, key: str | None = None,
           drop_role: bool = False) -> int:
    """Take back ``role``'s access to the keys named (or prefixed) ``key``, or to all its keys.
    When it keeps none, its privileges on the schema and views go too, and ``drop_role``
    drops the role itself. Returns how many key grants were removed."""
    _check_role_name(role)
    with get_engine(settings).begin() as conn:
        _require_postgres(conn)
        q = delete(DashboardGrant).where(DashboardGrant.role_name == role)
        if key is not None:
            q = q.where(DashboardGrant.key_id.in_([k.id for k in _find_keys(conn, key)]))
        removed = conn.execute(q).rowcount
        left = conn.execute(select(DashboardGrant.key_id)
                            .where(DashboardGrant.role_name == role)).first()
        if left is None and _role_exists(conn, role):
            r = _quote(conn, role)
            conn.execute(text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {SCHEMA} "
                              f"REVOKE SELECT ON TABLES FROM {r}"))
            conn.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA {SCHEMA} FROM {r}"))
            conn.execute(text(f"REVOKE ALL ON SCHEMA {SCHEMA} FROM {r}"))
            conn.execute(text(f"REVOKE CONNECT ON DATABASE {_quote(conn, _database(conn))} "
                              f"FROM {r}"))
            if drop_role:
                try:
                    conn.execute(text(f"DROP ROLE {r}"))
                except DBAPIError as exc:  # e.g. it holds privileges in another database
                    # the whole revoke rolls back with it: nothing is half done
                    raise ReportingError(f"could not drop role {role!r}: "
                                         f"{str(exc.orig).strip()}") from None
        elif drop_role and left is not None:
            raise ReportingError(f"role {role!r} still has other keys; revoke them all "
                                 "(no --key) to drop it")
    return removed


def _grants(conn: Connection, role: str | None) -> list[GrantRow]:
    q = (select(DashboardGrant.role_name, ApiKey.id, ApiKey.name, ApiKey.prefix,
                DashboardGrant.created_at)
         .join(ApiKey, ApiKey.id == DashboardGrant.key_id)
         .order_by(DashboardGrant.role_name, ApiKey.id))
    if role is not None:
        q = q.where(DashboardGrant.role_name == role)
    return [GrantRow(*row) for row in conn.execute(q).all()]


def list_grants(settings: Settings, role: str | None = None) -> list[GrantRow]:
    """Which role may read which API key's rows (all roles, or one)."""
    with get_engine(settings).connect() as conn:
        return _grants(conn, role)
