"""baselines, signature matches and failure verdicts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 01:00:00.000000

A baseline build runs a branch tip, not a patchset: `builds.patchset_id`
becomes nullable and `builds.baseline_id` names its `baseline_runs` row
(project, branch, job and the schedule's slot, unique, so processes that
queue the same period's run together queue it once). `builds.tested_commit`
keeps the commit a build tested. `signature_matches` holds the known-failure
signatures a failed build matched, `failure_verdicts` how each of its failed
tests was explained (ci/verdict.py).
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'baseline_runs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('project', sa.String(length=255), nullable=False),
        sa.Column('branch', sa.String(length=255), nullable=False),
        sa.Column('job', sa.String(length=128), nullable=False),
        sa.Column('slot', sa.String(length=64), nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_baseline_runs')),
        sa.UniqueConstraint('project', 'branch', 'job', 'slot',
                            name=op.f('uq_baseline_runs_project_branch_job_slot')),
    )
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.alter_column('patchset_id', existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column('baseline_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('tested_commit', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_builds_baseline_id', ['baseline_id'], unique=False)
        batch_op.create_foreign_key('fk_builds_baseline_id_baseline_runs', 'baseline_runs',
                                    ['baseline_id'], ['id'], ondelete='CASCADE')
    op.create_table(
        'signature_matches',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('build_id', sa.Integer(), nullable=False),
        sa.Column('signature_id', sa.String(length=128), nullable=False),
        sa.Column('bug', sa.Text(), nullable=False),
        sa.Column('test_id', sa.Text(), nullable=True),
        sa.Column('file', sa.Text(), nullable=True),
        sa.Column('excerpt', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['build_id'], ['builds.id'],
                                name=op.f('fk_signature_matches_build_id_builds'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_signature_matches')),
    )
    op.create_index('ix_signature_matches_build_id', 'signature_matches', ['build_id'],
                    unique=False)
    op.create_table(
        'failure_verdicts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('build_id', sa.Integer(), nullable=False),
        sa.Column('test_id', sa.Text(), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('link', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['build_id'], ['builds.id'],
                                name=op.f('fk_failure_verdicts_build_id_builds'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_failure_verdicts')),
    )
    op.create_index('ix_failure_verdicts_build_id', 'failure_verdicts', ['build_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_failure_verdicts_build_id', table_name='failure_verdicts')
    op.drop_table('failure_verdicts')
    op.drop_index('ix_signature_matches_build_id', table_name='signature_matches')
    op.drop_table('signature_matches')
    with op.batch_alter_table('builds', schema=None) as batch_op:
        batch_op.drop_constraint('fk_builds_baseline_id_baseline_runs', type_='foreignkey')
        batch_op.drop_index('ix_builds_baseline_id')
        batch_op.drop_column('tested_commit')
        batch_op.drop_column('baseline_id')
        batch_op.alter_column('patchset_id', existing_type=sa.Integer(), nullable=False)
    op.drop_table('baseline_runs')
