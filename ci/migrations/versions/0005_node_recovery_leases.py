"""node recovery and leases

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00.000000

Adds `nodes.dirty_build_id` (the build whose leftovers a node may still hold:
its cleanup is run before the node serves again) and the `leases` table (a
named turn one process at a time takes, e.g. the pool's health checks).
Nodes a lost worker left offline (`worker-lost`) keep no build to clean for:
the recovery cleans them with their job's cleanup for an example change.
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dirty_build_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_nodes_dirty_build_id_builds', 'builds',
                                    ['dirty_build_id'], ['id'], ondelete='SET NULL')
    op.create_table(
        'leases',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('holder', sa.String(length=255), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_leases')),
    )


def downgrade() -> None:
    op.drop_table('leases')
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_constraint('fk_nodes_dirty_build_id_builds', type_='foreignkey')
        batch_op.drop_column('dirty_build_id')
