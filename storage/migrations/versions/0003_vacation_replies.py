"""vacation auto-reply memory (once per sender per period)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('vacation_replies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('sender', sa.String(length=320), nullable=False),
    sa.Column('sent', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_vacation_replies_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vacation_replies')),
    sa.UniqueConstraint('user_id', 'sender', name='uq_vacation_replies_user_sender')
    )
    with op.batch_alter_table('vacation_replies', schema=None) as batch_op:
        batch_op.create_index('ix_vacation_replies_sent', ['sent'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('vacation_replies', schema=None) as batch_op:
        batch_op.drop_index('ix_vacation_replies_sent')
    op.drop_table('vacation_replies')
