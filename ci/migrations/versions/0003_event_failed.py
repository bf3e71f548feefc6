"""event failed

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 21:00:00.000000

Adds `events.failed_at`: an event the scheduler gave up on (a permanent error
such as a patch set Gerrit does not know, or transient failures past their
time budget) is acknowledged with its reason in `outcome` and this time set,
so it never holds back later events and an operator can list it.
"""

import sqlalchemy as sa
from alembic import op

import ci.models

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failed_at', ci.models.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.create_index('ix_events_failed_at', ['failed_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_failed_at')
        batch_op.drop_column('failed_at')
