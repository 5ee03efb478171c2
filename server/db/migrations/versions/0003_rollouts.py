"""Rollouts: a module taken to the targets a filter picks, in waves, with success and error
thresholds; and the DDI change feed, through which every worker drops cached poll answers
another worker made stale.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ddi_changes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('controller_id', sa.String(length=128), nullable=True),
    sa.Column('at_ns', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ddi_changes'))
    )
    with op.batch_alter_table('ddi_changes', schema=None) as batch_op:
        batch_op.create_index('ix_ddi_changes_at', ['at_ns'], unique=False)

    op.create_table('rollouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('module_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('target_filter', sa.Text(), nullable=False),
    sa.Column('success_percent', sa.Integer(), nullable=False),
    sa.Column('error_percent', sa.Integer(), nullable=False),
    sa.Column('on_error', sa.String(length=16), nullable=False),
    sa.Column('approval_required', sa.Boolean(), nullable=False),
    sa.Column('maintenance', sa.Text(), nullable=True),
    sa.Column('state', sa.String(length=24), nullable=False),
    sa.Column('current_wave', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('approved_by', sa.String(length=128), nullable=True),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('updated_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['module_id'], ['software_modules.id'], name=op.f('fk_rollouts_module_id_software_modules')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollouts'))
    )
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.create_index('ix_rollouts_tenant', ['tenant', 'id'], unique=False)

    op.create_table('rollout_waves',
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('started_ns', sa.BigInteger(), nullable=True),
    sa.Column('finished_ns', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], name=op.f('fk_rollout_waves_rollout_id_rollouts')),
    sa.PrimaryKeyConstraint('rollout_id', 'number', name=op.f('pk_rollout_waves'))
    )
    op.create_table('rollout_targets',
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('target_id', sa.Integer(), nullable=False),
    sa.Column('wave', sa.Integer(), nullable=False),
    sa.Column('action_id', sa.Integer(), nullable=True),
    sa.Column('skipped', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['action_id'], ['actions.id'], name=op.f('fk_rollout_targets_action_id_actions')),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], name=op.f('fk_rollout_targets_rollout_id_rollouts')),
    sa.ForeignKeyConstraint(['target_id'], ['targets.id'], name=op.f('fk_rollout_targets_target_id_targets')),
    sa.PrimaryKeyConstraint('rollout_id', 'target_id', name=op.f('pk_rollout_targets'))
    )
    with op.batch_alter_table('rollout_targets', schema=None) as batch_op:
        batch_op.create_index('ix_rollout_targets_wave', ['rollout_id', 'wave'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('ddi_changes', schema=None) as batch_op:
        batch_op.drop_index('ix_ddi_changes_at')

    op.drop_table('ddi_changes')
    with op.batch_alter_table('rollout_targets', schema=None) as batch_op:
        batch_op.drop_index('ix_rollout_targets_wave')

    op.drop_table('rollout_targets')
    op.drop_table('rollout_waves')
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_index('ix_rollouts_tenant')

    op.drop_table('rollouts')
