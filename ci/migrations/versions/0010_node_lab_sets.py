"""node lab sets and provisioning

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 00:00:00.000000

Adds `nodes.lab_set` (the lab set a node belongs to: the pool hands a build
the nodes of one set) and `nodes.provision` (`static` or `checkpoint`: how
the node is made clean for a build), both copied from the configuration.
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lab_set', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('provision', sa.String(length=32), nullable=False,
                                      server_default='static'))
        batch_op.create_index('ix_nodes_lab_set', ['lab_set'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_index('ix_nodes_lab_set')
        batch_op.drop_column('provision')
        batch_op.drop_column('lab_set')
