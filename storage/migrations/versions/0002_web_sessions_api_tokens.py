"""web panel sessions and API tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('web_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('client', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_web_sessions_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_web_sessions')),
    sa.UniqueConstraint('digest', name=op.f('uq_web_sessions_digest'))
    )
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_web_sessions_user', ['user_id'], unique=False)

    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('scope_domain_id', sa.Integer(), nullable=True),
    sa.Column('scope_department_id', sa.Integer(), nullable=True),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('expires', sa.Float(), nullable=True),
    sa.Column('last_used', sa.Float(), nullable=True),
    sa.Column('last_ip', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['scope_department_id'], ['departments.id'], name=op.f('fk_api_tokens_scope_department_id_departments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['scope_domain_id'], ['domains.id'], name=op.f('fk_api_tokens_scope_domain_id_domains'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('digest', name=op.f('uq_api_tokens_digest')),
    sa.UniqueConstraint('user_id', 'name', name='uq_api_tokens_user_name')
    )


def downgrade() -> None:
    op.drop_table('api_tokens')
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_web_sessions_user')
    op.drop_table('web_sessions')
