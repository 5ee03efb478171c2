"""Field updates (hawkBit DDI): tenants' DDI settings, targets, software modules and their
artifacts, actions and their history. Every image already stored becomes a software module
with its `.upd` as the one artifact, as a new upload does.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ddi_tenants',
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('gateway_token_hash', sa.String(length=64), nullable=True),
    sa.Column('polling_seconds', sa.Integer(), nullable=False),
    sa.Column('trusted_issuers', sa.Text(), nullable=False),
    sa.Column('confirmation_required', sa.Boolean(), nullable=False),
    sa.Column('updated_ns', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('tenant', name=op.f('pk_ddi_tenants'))
    )
    op.create_table('software_modules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('image_id', sa.String(length=64), nullable=True),
    sa.Column('variants', sa.Text(), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_software_modules_image_id_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_software_modules')),
    sa.UniqueConstraint('image_id', name=op.f('uq_software_modules_image_id'))
    )
    with op.batch_alter_table('software_modules', schema=None) as batch_op:
        batch_op.create_index('ix_software_modules_tenant', ['tenant', 'name', 'version'], unique=False)

    op.create_table('artifacts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('module_id', sa.Integer(), nullable=False),
    sa.Column('filename', sa.String(length=128), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['module_id'], ['software_modules.id'], name=op.f('fk_artifacts_module_id_software_modules')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifacts')),
    sa.UniqueConstraint('module_id', 'filename', name='uq_artifacts_module_filename')
    )
    op.create_table('targets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('controller_id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=True),
    sa.Column('unit_id', sa.Integer(), nullable=True),
    sa.Column('attributes', sa.Text(), nullable=False),
    sa.Column('attributes_requested', sa.Boolean(), nullable=False),
    sa.Column('update_mode', sa.String(length=16), nullable=False),
    sa.Column('pinned_module_id', sa.Integer(), nullable=True),
    sa.Column('tags', sa.Text(), nullable=False),
    sa.Column('installed_module_id', sa.Integer(), nullable=True),
    sa.Column('installed_action_id', sa.Integer(), nullable=True),
    sa.Column('auto_confirm', sa.Boolean(), nullable=False),
    sa.Column('auto_confirm_by', sa.String(length=128), nullable=True),
    sa.Column('auto_confirm_remark', sa.Text(), nullable=True),
    sa.Column('address', sa.String(length=64), nullable=True),
    sa.Column('last_seen_ns', sa.BigInteger(), nullable=True),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('updated_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['installed_module_id'], ['software_modules.id'], name=op.f('fk_targets_installed_module_id_software_modules')),
    sa.ForeignKeyConstraint(['pinned_module_id'], ['software_modules.id'], name=op.f('fk_targets_pinned_module_id_software_modules')),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_targets_unit_id_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_targets')),
    sa.UniqueConstraint('tenant', 'controller_id', name='uq_targets_tenant_controller')
    )
    with op.batch_alter_table('targets', schema=None) as batch_op:
        batch_op.create_index('ix_targets_token', ['token_hash'], unique=False)

    op.create_table('actions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('target_id', sa.Integer(), nullable=False),
    sa.Column('module_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=24), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('maintenance', sa.Text(), nullable=True),
    sa.Column('rollout_id', sa.Integer(), nullable=True),
    sa.Column('wave', sa.Integer(), nullable=True),
    sa.Column('last_message', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('updated_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['module_id'], ['software_modules.id'], name=op.f('fk_actions_module_id_software_modules')),
    sa.ForeignKeyConstraint(['target_id'], ['targets.id'], name=op.f('fk_actions_target_id_targets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_actions'))
    )
    with op.batch_alter_table('actions', schema=None) as batch_op:
        batch_op.create_index('ix_actions_rollout', ['rollout_id', 'wave', 'state'], unique=False)
        batch_op.create_index('ix_actions_target', ['target_id', 'active', 'id'], unique=False)

    op.create_table('action_status',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('action_id', sa.Integer(), nullable=False),
    sa.Column('at_ns', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=24), nullable=False),
    sa.Column('code', sa.Integer(), nullable=True),
    sa.Column('messages', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['action_id'], ['actions.id'], name=op.f('fk_action_status_action_id_actions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_action_status'))
    )
    with op.batch_alter_table('action_status', schema=None) as batch_op:
        batch_op.create_index('ix_action_status_action', ['action_id', 'id'], unique=False)

    _modules_for_stored_images()


def _modules_for_stored_images() -> None:
    connection = op.get_bind()
    images = connection.execute(sa.text(
        "SELECT id, tenant, sha256, size, product, version, build, variants, created_ns, "
        "uploaded_by FROM images ORDER BY created_ns")).all()
    for image in images:
        module_id = connection.execute(sa.text(
            "INSERT INTO software_modules (tenant, kind, name, version, image_id, variants, "
            "created_ns, created_by) VALUES (:tenant, 'os', :name, :version, :image_id, "
            ":variants, :created_ns, :created_by) RETURNING id"), {
                "tenant": image.tenant, "name": image.product,
                "version": f"{image.version}+{image.build}", "image_id": image.id,
                "variants": image.variants, "created_ns": image.created_ns,
                "created_by": image.uploaded_by}).scalar_one()
        connection.execute(sa.text(
            "INSERT INTO artifacts (module_id, filename, sha256, size, created_ns) VALUES "
            "(:module_id, :filename, :sha256, :size, :created_ns)"), {
                "module_id": module_id,
                "filename": f"{image.product}-{image.version}+{image.build}.upd",
                "sha256": image.sha256, "size": image.size, "created_ns": image.created_ns})



def downgrade() -> None:
    with op.batch_alter_table('action_status', schema=None) as batch_op:
        batch_op.drop_index('ix_action_status_action')

    op.drop_table('action_status')
    with op.batch_alter_table('actions', schema=None) as batch_op:
        batch_op.drop_index('ix_actions_target')
        batch_op.drop_index('ix_actions_rollout')

    op.drop_table('actions')
    with op.batch_alter_table('targets', schema=None) as batch_op:
        batch_op.drop_index('ix_targets_token')

    op.drop_table('targets')
    op.drop_table('artifacts')
    with op.batch_alter_table('software_modules', schema=None) as batch_op:
        batch_op.drop_index('ix_software_modules_tenant')

    op.drop_table('software_modules')
    op.drop_table('ddi_tenants')
