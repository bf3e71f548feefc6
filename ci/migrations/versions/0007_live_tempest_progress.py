"""live tempest progress and the log banner's index

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 00:30:00.000000

Adds the tempest step's live progress to `build_steps` (tests done, passed,
failed and the test running now, written by the worker from the subunit
stream as it arrives, at most about once a second: runners/tempest_progress.py),
and an index on `builds.log_path`, which the log listing's build banner looks
up (it scanned every build).
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('build_steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tests_done', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('tests_passed', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('tests_failed', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('current_test', sa.Text(), nullable=True))
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.create_index('ix_builds_log_path', ['log_path'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.drop_index('ix_builds_log_path')
    with op.batch_alter_table('build_steps', schema=None) as batch_op:
        batch_op.drop_column('current_test')
        batch_op.drop_column('tests_failed')
        batch_op.drop_column('tests_passed')
        batch_op.drop_column('tests_done')
