"""dashboard accounts, audit log, forced builds

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 00:00:00.000000

Adds `users` (dashboard operators: a name, an Argon2id password hash, a role,
disabled), `audit_log` (who did what to which build/node/patchset, when, from
which address) and `builds.forced_by` (the operator who forced a build of a
change the file filter excludes: the vote comment names them).
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'users',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('password_hash', sa.Text(), nullable=False),
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
        sa.UniqueConstraint('name', name=op.f('uq_users_name')),
    )
    op.create_table(
        'audit_log',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('actor', sa.String(length=255), nullable=False),
        sa.Column('auth', sa.String(length=16), nullable=False),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('target_kind', sa.String(length=16), nullable=False),
        sa.Column('target_id', sa.String(length=255), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('source', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log')),
    )
    op.create_index('ix_audit_log_target', 'audit_log', ['target_kind', 'target_id', 'id'],
                    unique=False)
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('forced_by', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.drop_column('forced_by')
    op.drop_index('ix_audit_log_target', table_name='audit_log')
    op.drop_table('audit_log')
    op.drop_table('users')
