"""reporting views for dashboards (schema ``reporting`` on Postgres, ``reporting_*`` on SQLite)
and ``dashboard_grants`` (which database role may read which API key's rows)

The view definitions are frozen here on purpose: a view's shape is a promise to dashboards
(docs/dashboards.md). A later revision that changes a shape adds ``<name>_v2`` beside the old
view; one that only follows a base-table change re-creates the same shape.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 00:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("jobs_v1", "points_v1", "mislabels_v1", "curves_v1", "comparison_v1")
# comparison_v1 reads these points of each method's addition curve (as stored in job_curves)
ACCURACY_AT = ((5, 0.05), (20, 0.2), (50, 0.5), (100, 1.0))

# a value that is not a finite float reads as NULL, as the API's downloads give it (SQLite
# stores no NaN; Postgres sorts NaN above every number, so BETWEEN drops it too)
_FINITE = "CASE WHEN {x} BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308 THEN {x} END"


def _finite(x: str) -> str:
    return _FINITE.format(x=x)


class _Dialect:
    """The SQL pieces that differ between Postgres and SQLite."""

    def __init__(self, name: str) -> None:
        self.pg = name == "postgresql"

    def view(self, name: str) -> str:
        return f"reporting.{name}" if self.pg else f"reporting_{name}"

    def visible(self, owner_id: str) -> str:
        """Postgres: the rows of the API keys granted to a role the reader has the privileges
        of, or every row for the tables' owner (the service) and superusers. The views run
        with their owner's rights, so ``current_user`` (the reader) is the only thing that
        narrows them; ``security_barrier`` keeps a reader's own functions from seeing rows
        before this test. SQLite has no users: every row."""
        if not self.pg:
            return "1 = 1"
        return (f"(EXISTS (SELECT 1 FROM dashboard_grants g JOIN pg_catalog.pg_roles r "
                f"ON r.rolname = g.role_name WHERE g.key_id = {owner_id} "
                f"AND pg_catalog.pg_has_role(current_user, r.oid, 'USAGE')) "
                f"OR pg_catalog.pg_has_role(current_user, (SELECT c.relowner FROM "
                f"pg_catalog.pg_class c WHERE c.oid = 'jobs'::regclass), 'USAGE'))")

    def text(self, doc: str, key: str) -> str:
        return f"({doc} ->> '{key}')" if self.pg else f"json_extract({doc}, '$.{key}')"

    def num(self, doc: str, key: str, typ: str = "double precision") -> str:
        if self.pg:
            return f"({doc} ->> '{key}')::{typ}"
        sqlite_type = "INTEGER" if typ == "integer" else "REAL"
        return f"CAST(json_extract({doc}, '$.{key}') AS {sqlite_type})"

    def methods_text(self, col: str) -> str:
        """A comparison job's methods as 'a,b,c' (in the job's order)."""
        if self.pg:
            return (f"(SELECT string_agg(t.m, ',' ORDER BY t.n) FROM json_array_elements_text("
                    f"CASE WHEN json_typeof({col}) = 'array' THEN {col} ELSE '[]'::json END) "
                    f"WITH ORDINALITY AS t(m, n))")
        return (f"(SELECT group_concat(t.value, ',') FROM (SELECT value FROM json_each("
                f"CASE WHEN json_type({col}) = 'array' THEN {col} ELSE '[]' END) "
                f"ORDER BY key) AS t)")

    def first_method(self, col: str) -> str:
        return f"({col} ->> 0)" if self.pg else f"json_extract({col}, '$[0]')"

    def before_colon(self, col: str) -> str:
        if self.pg:
            return f"split_part({col}, ':', 1)"
        return f"substr({col}, 1, instr({col}, ':') - 1)"

    def after_colon(self, col: str) -> str:
        if self.pg:
            return f"split_part({col}, ':', 2)"
        return f"substr({col}, instr({col}, ':') + 1)"

    def method_records(self, summary: str) -> str:
        """FROM-clause item: one row (rec, pos) per method of summary.comparison.methods."""
        if self.pg:
            doc = f"{summary} -> 'comparison' -> 'methods'"
            return (f"CROSS JOIN LATERAL json_array_elements(CASE WHEN json_typeof({doc}) = "
                    f"'array' THEN {doc} ELSE '[]'::json END) WITH ORDINALITY AS m(rec, pos)")
        # json_each yields nothing when the path is missing; key is the 0-based position
        return f"JOIN json_each({summary}, '$.comparison.methods') AS m"

    def rec(self) -> str:
        return "m.rec" if self.pg else "m.value"

    def pos(self) -> str:
        return "CAST(m.pos AS integer)" if self.pg else "(CAST(m.key AS INTEGER) + 1)"

    def seconds(self, later: str, earlier: str) -> str:
        if self.pg:
            return f"EXTRACT(EPOCH FROM ({later} - {earlier}))::double precision"
        return f"((julianday({later}) - julianday({earlier})) * 86400.0)"


def view_sql(dialect: str) -> dict[str, str]:
    """Each view's SELECT for one dialect."""
    d = _Dialect(dialect)
    compare = "'compare'"  # jobs.method of a comparison job (several methods, one job)
    jobs = f"""
SELECT j.id AS job_id, k.name AS key_name, k.prefix AS key_prefix,
       j.method AS method,
       CASE WHEN j.method = {compare} THEN {d.methods_text('j.methods')} ELSE j.method END
           AS methods,
       j.status AS status, j.stage AS stage, j.progress AS progress,
       j.created_at AS created_at, j.started_at AS started_at, j.finished_at AS finished_at,
       {d.num('j.timings', 'total_s')} AS run_time_s,
       {d.seconds('j.started_at', 'j.created_at')} AS wait_s,
       {d.num('j.summary', 'n_train', 'integer')} AS n_train,
       j.fraction AS fraction,
       {d.num('j.summary', 'n_selected', 'integer')} AS n_selected,
       {d.num('j.summary', 'n_suspected', 'integer')} AS n_suspected,
       j.expected_label_errors AS expected_label_errors,
       j.inject_flips AS inject_flips,
       j.seed AS seed, j.attempts AS attempts, j.queue AS queue,
       {d.text('j.error', 'title')} AS error_title
FROM jobs j JOIN api_keys k ON k.id = j.owner_id
WHERE {d.visible('j.owner_id')}"""

    # single-method jobs: job_points; comparison jobs: every method's rows in job_method_points
    # (the id and label of a point come from job_points, as the API's downloads give them)
    points = f"""
SELECT p.job_id AS job_id, j.method AS method, p.point_index AS point_index,
       p.point_id AS point_id, {_finite('p.score')} AS score, p.rank AS value_rank,
       p.selected AS selected, p.given_label AS label
FROM job_points p JOIN jobs j ON j.id = p.job_id
WHERE j.method <> {compare} AND {d.visible('j.owner_id')}
UNION ALL
SELECT mp.job_id, mp.method, mp.point_index, p.point_id, {_finite('mp.score')}, mp.rank,
       mp.selected, p.given_label
FROM job_method_points mp
JOIN job_points p ON p.job_id = mp.job_id AND p.point_index = mp.point_index
JOIN jobs j ON j.id = mp.job_id
WHERE j.method = {compare} AND {d.visible('j.owner_id')}"""

    # the report is computed from the first compared method's values in a comparison job
    mislabels = f"""
SELECT p.job_id AS job_id,
       CASE WHEN j.method = {compare} THEN {d.first_method('j.methods')} ELSE j.method END
           AS method,
       p.point_index AS point_index, p.point_id AS point_id,
       p.given_label AS given_label, p.suggested_label AS suggested_label,
       p.suggested_prob AS suggested_prob, p.label_error_prob AS label_error_prob,
       {_finite('p.mislabel_score')} AS mislabel_score, p.mislabel_rank AS mislabel_rank,
       p.suspected_mislabel AS suspected
FROM job_points p JOIN jobs j ON j.id = p.job_id
WHERE {d.visible('j.owner_id')}"""

    # comparison jobs key curves "<method>:<curve>"; single-method jobs store the bare curve
    name = f"CASE WHEN j.method = {compare} THEN {d.after_colon('c.curve')} ELSE c.curve END"
    curves = f"""
SELECT c.job_id AS job_id,
       CASE WHEN j.method = {compare} THEN {d.before_colon('c.curve')} ELSE j.method END
           AS method,
       {name} AS curve, c.step AS step, c.fraction AS fraction, c.n_points AS n_points,
       CASE WHEN {name} <> 'flips' THEN {_finite('c.value')} END AS accuracy,
       CASE WHEN {name} = 'flips' THEN {_finite('c.value')} END AS flips_found
FROM job_curves c JOIN jobs j ON j.id = c.job_id
WHERE {d.visible('j.owner_id')}"""

    rec = d.rec()
    method = d.text(rec, "method")
    accuracy = ",\n       ".join(
        f"(SELECT {_finite('c.value')} FROM job_curves c WHERE c.job_id = j.id "
        f"AND c.curve = {method} || ':' || 'addition' AND abs(c.fraction - {f}) < 1e-9) "
        f"AS accuracy_at_{pct}" for pct, f in ACCURACY_AT)
    comparison = f"""
SELECT j.id AS job_id, {d.pos()} AS position, {method} AS method,
       {d.num(rec, 'run_time_s')} AS run_time_s, {d.num(rec, 'curves_s')} AS curves_s,
       {d.num(rec, 'n_selected', 'integer')} AS n_selected,
       {d.num(rec, 'flip_roc_auc')} AS flip_roc_auc, {d.num(rec, 'flip_f1')} AS flip_f1,
       {d.num(rec, 'ndcg')} AS ndcg,
       {accuracy}
FROM jobs j {d.method_records('j.summary')}
WHERE j.method = {compare} AND {d.visible('j.owner_id')}"""
    return {"jobs_v1": jobs, "points_v1": points, "mislabels_v1": mislabels,
            "curves_v1": curves, "comparison_v1": comparison}


def upgrade() -> None:
    op.create_table(
        "dashboard_grants",
        sa.Column("role_name", sa.String(length=63), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_dashboard_grants_key_id_api_keys"),
            ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("role_name", "key_id", name=op.f("pk_dashboard_grants")),
    )
    with op.batch_alter_table("dashboard_grants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dashboard_grants_key_id"), ["key_id"],
                              unique=False)

    dialect = op.get_bind().dialect.name
    d = _Dialect(dialect)
    if d.pg:
        op.execute("CREATE SCHEMA IF NOT EXISTS reporting")
    for name, sql in view_sql(dialect).items():
        # security_barrier: a reader's WHERE clause never runs before the key filter
        option = " WITH (security_barrier)" if d.pg else ""
        op.execute(f"CREATE VIEW {d.view(name)}{option} AS{sql}")


def downgrade() -> None:
    d = _Dialect(op.get_bind().dialect.name)
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {d.view(name)}")
    if d.pg:
        # RESTRICT: a view someone else put in the schema stops the downgrade, not vanishes
        op.execute("DROP SCHEMA IF EXISTS reporting RESTRICT")
    with op.batch_alter_table("dashboard_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dashboard_grants_key_id"))
    op.drop_table("dashboard_grants")
