"""mailing approvals

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 14:41:07.518930
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_STATUSES = ('planned', 'queued', 'sending', 'sent', 'paused', 'cancelled', 'failed')
_NEW_STATUSES = ('planned', 'awaiting_approval', 'approved', 'declined', 'queued', 'sending', 'sent', 'paused', 'cancelled', 'failed')


def upgrade() -> None:
    with op.batch_alter_table('partner', schema=None) as batch_op:
        batch_op.add_column(sa.Column('approve_mailings', sa.Boolean(), server_default=sa.false(), nullable=False))

    with op.batch_alter_table('mailing', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('review_note', sa.String(length=500), server_default='', nullable=False))
        # 'awaiting_approval' is longer than the 16 characters the column had.
        batch_op.alter_column('status',
               existing_type=sa.Enum(*_OLD_STATUSES, name='mailingstatus', native_enum=False, length=16),
               type_=sa.Enum(*_NEW_STATUSES, name='mailingstatus', native_enum=False, length=32),
               existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('mailing', schema=None) as batch_op:
        batch_op.alter_column('status',
               existing_type=sa.Enum(*_NEW_STATUSES, name='mailingstatus', native_enum=False, length=32),
               type_=sa.Enum(*_OLD_STATUSES, name='mailingstatus', native_enum=False, length=16),
               existing_nullable=False)
        batch_op.drop_column('review_note')
        batch_op.drop_column('reviewed_at')

    with op.batch_alter_table('partner', schema=None) as batch_op:
        batch_op.drop_column('approve_mailings')
