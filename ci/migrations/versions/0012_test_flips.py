"""test flips: the flaky rule's flips, stored as builds are recorded

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 06:40:00.000000

One row per change of a test's outcome on the same code (a re-run that passed
inside a build, or a pass/fail change between builds of one patchset and job,
ci/test_history.py `flips_of`), written when the build that shows it is
recorded; the /flaky page counts a window of them (ix_test_flips_finished_at)
instead of comparing every failure of the window with the other builds.
The history recorded before is backfilled with the same rule
(ci/test_flips.py `backfill`).
"""

import sqlalchemy as sa
from alembic import op

from ci.models import UTCDateTime
from ci.test_flips import backfill

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'test_flips',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('test_id', sa.Text(), nullable=False),
        sa.Column('build_id', sa.Integer(), nullable=False),
        sa.Column('from_build_id', sa.Integer(), nullable=True),
        sa.Column('patchset_id', sa.Integer(), nullable=True),
        sa.Column('job', sa.String(length=128), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('recovered', sa.Boolean(), nullable=False),
        sa.Column('finished_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('failed_at', UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['build_id'], ['builds.id'],
                                name=op.f('fk_test_flips_build_id_builds'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['from_build_id'], ['builds.id'],
                                name=op.f('fk_test_flips_from_build_id_builds'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['patchset_id'], ['patchsets.id'],
                                name=op.f('fk_test_flips_patchset_id_patchsets'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_test_flips')),
    )
    op.create_index('ix_test_flips_build_id', 'test_flips', ['build_id'], unique=False)
    op.create_index('ix_test_flips_from_build_id', 'test_flips', ['from_build_id'],
                    unique=False)
    op.create_index('ix_test_flips_finished_at', 'test_flips', ['finished_at'], unique=False)
    bind = op.get_bind()
    backfill(bind)
    if bind.dialect.name == "postgresql":
        # Filled at once: without statistics the planner reads it all for a window.
        op.execute("ANALYZE test_flips")


def downgrade() -> None:
    op.drop_index('ix_test_flips_finished_at', table_name='test_flips')
    op.drop_index('ix_test_flips_from_build_id', table_name='test_flips')
    op.drop_index('ix_test_flips_build_id', table_name='test_flips')
    op.drop_table('test_flips')
