"""node offline cause

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 09:00:00.000000

Adds `nodes.offline_cause`, so health checks revive only the nodes they took
offline themselves. Existing rows are classified from what the database
already says:

- offline after "cleanup failed after build N" (runners.pool.release): cleanup-failed;
- any other offline node (health checks were the only other way): health-check;
- a node still held by an `error` build: only the lease reaper errors a build
  without releasing its nodes (a worker finishes and releases in one commit),
  so these are the reservations a lost worker left behind: freed as worker-lost.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import ci.models

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# Frozen copies of the values at this revision (a migration must not follow later code).
nodes = sa.table(
    'nodes',
    sa.column('id', sa.Integer()),
    sa.column('state', sa.String()),
    sa.column('offline_cause', sa.String()),
    sa.column('build_id', sa.Integer()),
    sa.column('message', sa.Text()),
    sa.column('updated_at', ci.models.UTCDateTime(timezone=True)),
)
builds = sa.table(
    'builds',
    sa.column('id', sa.Integer()),
    sa.column('state', sa.String()),
    sa.column('worker', sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('offline_cause', sa.String(length=32), nullable=True))

    offline = nodes.c.state == 'offline'
    op.execute(nodes.update()
               .where(offline, nodes.c.message.like('cleanup failed after build %'))
               .values(offline_cause='cleanup-failed'))
    op.execute(nodes.update()
               .where(offline, nodes.c.offline_cause.is_(None))
               .values(offline_cause='health-check'))

    conn = op.get_bind()
    stranded = conn.execute(
        sa.select(nodes.c.id, nodes.c.build_id, builds.c.worker)
        .select_from(nodes.join(builds, nodes.c.build_id == builds.c.id))
        .where(builds.c.state == 'error')
    ).all()
    now = datetime.now(UTC)
    for node_id, build_id, worker in stranded:
        conn.execute(
            nodes.update().where(nodes.c.id == node_id)
            .values(state='offline', offline_cause='worker-lost', build_id=None, updated_at=now,
                    message=f"worker {worker} lost during build {build_id}: "
                            "node state unknown (freed by the 0002 upgrade)")
        )


def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('offline_cause')
