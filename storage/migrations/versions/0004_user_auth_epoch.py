"""credential epochs: end live IMAP/POP3 sessions when a user's credentials change

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

``auth_epoch`` goes up on every change that can invalidate a logged-in
session (password changed, app password revoked, account disabled, app
passwords required, sessions ended); the protocol services poll it for
the users they serve. ``sessions_epoch`` is the epoch from which logins
count: sessions that logged in at an earlier epoch were ended ("this
wasn't me").
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('auth_epoch', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('sessions_epoch', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('sessions_epoch')
        batch_op.drop_column('auth_epoch')
