"""test results' attachments in the log tree

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 00:40:00.000000

A test's subunit attachments other than its traceback and reason (the
captured logging, stdout, stderr a tempest test carries) are written to the
build's log tree, one file per test class, a section per test
(runners/subunit.py); `attachments` is that file's path relative to the
build's log URL, NULL when the test had none.
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('test_results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attachments', sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('test_results', schema=None) as batch_op:
        batch_op.drop_column('attachments')
