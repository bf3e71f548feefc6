"""history and test indexes

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 00:00:00.000000

The indexes the dashboard's history, test and chart pages look up by
(docs/dashboard.md): the build list's keyset order, alone and under a job or
result filter; a change's builds; a node's builds; the builds finished in a
window; one test's history, with each result's status (so the flaky query
reads it from the index alone); and the failing (or flaky) results of a
window of builds, a small part of all results (a partial index).
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

FAILING = sa.text("status IN ('fail', 'uxsuccess', 'flaky')")


def upgrade() -> None:
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.create_index('ix_builds_created_at_id', ['created_at', 'id'], unique=False)
        batch_op.create_index('ix_builds_job_created_at_id', ['job', 'created_at', 'id'],
                              unique=False)
        batch_op.create_index('ix_builds_state_created_at_id', ['state', 'created_at', 'id'],
                              unique=False)
        batch_op.create_index('ix_builds_patchset_id', ['patchset_id'], unique=False)
        batch_op.create_index('ix_builds_finished_at', ['finished_at'], unique=False)
    with op.batch_alter_table('build_steps', schema=None) as batch_op:
        batch_op.create_index('ix_build_steps_node_build_id', ['node', 'build_id'], unique=False)
    with op.batch_alter_table('test_results', schema=None) as batch_op:
        # status too: the flaky query reads it from the index alone.
        batch_op.create_index('ix_test_results_test_id_build_id',
                              ['test_id', 'build_id', 'status'], unique=False)
        batch_op.create_index('ix_test_results_failing', ['build_id', 'test_id'], unique=False,
                              postgresql_where=FAILING, sqlite_where=FAILING)


def downgrade() -> None:
    with op.batch_alter_table('test_results', schema=None) as batch_op:
        batch_op.drop_index('ix_test_results_failing')
        batch_op.drop_index('ix_test_results_test_id_build_id')
    with op.batch_alter_table('build_steps', schema=None) as batch_op:
        batch_op.drop_index('ix_build_steps_node_build_id')
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.drop_index('ix_builds_finished_at')
        batch_op.drop_index('ix_builds_patchset_id')
        batch_op.drop_index('ix_builds_state_created_at_id')
        batch_op.drop_index('ix_builds_job_created_at_id')
        batch_op.drop_index('ix_builds_created_at_id')
