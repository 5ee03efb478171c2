"""The initial schema: operators, profiles, files, images, units, runs, events, credentials,
QA reports, erase certificates and the audit log.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at_ns', sa.BigInteger(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=255), nullable=False),
    sa.Column('remote', sa.String(length=64), nullable=False),
    sa.Column('details', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit'))
    )
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.create_index('ix_audit_target', ['target', 'at_ns'], unique=False)

    op.create_table('files',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_files'))
    )
    op.create_table('images',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('product', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('build', sa.Integer(), nullable=False),
    sa.Column('variants', sa.Text(), nullable=False),
    sa.Column('payload', sa.String(length=32), nullable=False),
    sa.Column('key_ids', sa.Text(), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('uploaded_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_images'))
    )
    op.create_table('profiles',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('document', sa.Text(), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('kernel_file', sa.String(length=128), nullable=True),
    sa.Column('initrd_file', sa.String(length=128), nullable=True),
    sa.Column('kernel_args', sa.String(length=512), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('updated_ns', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_profiles'))
    )
    op.create_table('units',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('serial', sa.String(length=128), nullable=False),
    sa.Column('profile', sa.String(length=64), nullable=True),
    sa.Column('variant', sa.String(length=64), nullable=True),
    sa.Column('dmi', sa.Text(), nullable=False),
    sa.Column('macs', sa.String(length=1024), nullable=False),
    sa.Column('hardware', sa.Text(), nullable=False),
    sa.Column('lifecycle', sa.String(length=16), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=True),
    sa.Column('failure', sa.Text(), nullable=True),
    sa.Column('device_token_hash', sa.String(length=64), nullable=True),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('updated_ns', sa.BigInteger(), nullable=False),
    sa.Column('manufactured_ns', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_units')),
    sa.UniqueConstraint('tenant', 'serial', name='uq_units_tenant_serial')
    )
    with op.batch_alter_table('units', schema=None) as batch_op:
        batch_op.create_index('ix_units_device_token', ['device_token_hash'], unique=False)
        batch_op.create_index('ix_units_status', ['lifecycle', 'status', 'updated_ns'], unique=False)
        batch_op.create_index('ix_units_updated', ['tenant', 'updated_ns', 'id', 'serial', 'macs', 'profile', 'variant'], unique=False)
        batch_op.create_index('ix_units_variant', ['variant', 'updated_ns'], unique=False)

    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('scopes', sa.String(length=255), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('api_tokens',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('scopes', sa.String(length=255), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('expires_ns', sa.BigInteger(), nullable=True),
    sa.Column('revoked_ns', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_tokens_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens'))
    )
    op.create_table('credentials',
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('sealed', sa.LargeBinary(), nullable=False),
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('handed_out_ns', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_credentials_unit_id_units')),
    sa.PrimaryKeyConstraint('unit_id', name=op.f('pk_credentials'))
    )
    op.create_table('erase_certificates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('document', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_erase_certificates_unit_id_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erase_certificates')),
    sa.UniqueConstraint('run_id', name=op.f('uq_erase_certificates_run_id'))
    )
    with op.batch_alter_table('erase_certificates', schema=None) as batch_op:
        batch_op.create_index('ix_erase_certificates_unit', ['unit_id'], unique=False)

    op.create_table('events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('timestamp_ns', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('result', sa.String(length=16), nullable=True),
    sa.Column('level', sa.String(length=16), nullable=True),
    sa.Column('done', sa.BigInteger(), nullable=True),
    sa.Column('total', sa.BigInteger(), nullable=True),
    sa.Column('received_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_events_unit_id_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events')),
    sa.UniqueConstraint('run_id', 'seq', name='uq_events_run_seq')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_unit', ['unit_id', 'id'], unique=False)

    op.create_table('qa_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('document', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_qa_reports_unit_id_units')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_qa_reports')),
    sa.UniqueConstraint('run_id', name=op.f('uq_qa_reports_run_id'))
    )
    with op.batch_alter_table('qa_reports', schema=None) as batch_op:
        batch_op.create_index('ix_qa_reports_unit', ['unit_id'], unique=False)

    op.create_table('runs',
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=True),
    sa.Column('failure', sa.Text(), nullable=True),
    sa.Column('started_ns', sa.BigInteger(), nullable=True),
    sa.Column('finished_ns', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_runs_unit_id_units')),
    sa.PrimaryKeyConstraint('run_id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_finished', ['finished_ns'], unique=False)
        batch_op.create_index('ix_runs_unit', ['unit_id', 'started_ns'], unique=False)

    op.create_table('sessions',
    sa.Column('id_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('csrf', sa.String(length=64), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('expires_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_sessions_user_id_users')),
    sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_sessions'))
    )


def downgrade() -> None:
    op.drop_table('sessions')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_unit')
        batch_op.drop_index('ix_runs_finished')

    op.drop_table('runs')
    with op.batch_alter_table('qa_reports', schema=None) as batch_op:
        batch_op.drop_index('ix_qa_reports_unit')

    op.drop_table('qa_reports')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_unit')

    op.drop_table('events')
    with op.batch_alter_table('erase_certificates', schema=None) as batch_op:
        batch_op.drop_index('ix_erase_certificates_unit')

    op.drop_table('erase_certificates')
    op.drop_table('credentials')
    op.drop_table('api_tokens')
    op.drop_table('users')
    with op.batch_alter_table('units', schema=None) as batch_op:
        batch_op.drop_index('ix_units_variant')
        batch_op.drop_index('ix_units_updated')
        batch_op.drop_index('ix_units_status')
        batch_op.drop_index('ix_units_device_token')

    op.drop_table('units')
    op.drop_table('profiles')
    op.drop_table('images')
    op.drop_table('files')
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_target')

    op.drop_table('audit')
