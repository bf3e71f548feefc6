"""report label refused

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:00:00.000000

Adds `reports.label_refused`: Gerrit's words when it refused a report's vote
(the CI account may not vote that label or value). The reporter then posts the
comment without the vote, once, and marks the report `label-refused`.
Existing rows have none.
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('label_refused', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_column('label_refused')
