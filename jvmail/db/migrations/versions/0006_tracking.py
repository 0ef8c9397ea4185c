"""tracking: soft bounce days, mailing links, event bounce class, link and amount, webhook nonces, postback secret

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 23:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('hub', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('soft_bounce_days', sa.Integer(), server_default='3', nullable=False)
        )
    with op.batch_alter_table('mailing', schema=None) as batch_op:
        batch_op.add_column(sa.Column('links', sa.JSON(none_as_null=True), nullable=True))
    with op.batch_alter_table('partner', schema=None) as batch_op:
        batch_op.add_column(sa.Column('postback_secret_env', sa.String(length=128), nullable=True))
    with op.batch_alter_table('tracking_event', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('bounce', sa.String(length=16), server_default='none', nullable=False)
        )
        batch_op.add_column(sa.Column('link_index', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('amount', sa.Double(), nullable=True))
    op.create_table(
        'webhook_nonce',
        sa.Column('provider', sa.String(length=16), nullable=False),
        sa.Column('token', sa.String(length=255), nullable=False),
        sa.Column(
            'seen_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint('provider', 'token', name=op.f('pk_webhook_nonce')),
    )


def downgrade() -> None:
    op.drop_table('webhook_nonce')
    with op.batch_alter_table('tracking_event', schema=None) as batch_op:
        batch_op.drop_column('amount')
        batch_op.drop_column('link_index')
        batch_op.drop_column('bounce')
    with op.batch_alter_table('partner', schema=None) as batch_op:
        batch_op.drop_column('postback_secret_env')
    with op.batch_alter_table('mailing', schema=None) as batch_op:
        batch_op.drop_column('links')
    with op.batch_alter_table('hub', schema=None) as batch_op:
        batch_op.drop_column('soft_bounce_days')
