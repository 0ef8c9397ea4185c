"""periodic jobs: hub schedule settings, scheduler lease, statement sends

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 00:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('hub', schema=None) as batch_op:
        batch_op.add_column(sa.Column('plan_day', sa.String(length=3), server_default='thu', nullable=False))
        batch_op.add_column(sa.Column('plan_hour', sa.Integer(), server_default='9', nullable=False))
        batch_op.add_column(sa.Column('report_hour', sa.Integer(), server_default='8', nullable=False))
        batch_op.add_column(
            sa.Column('missed_grace_hours', sa.Integer(), server_default='6', nullable=False)
        )
    op.create_table(
        'scheduler_lease',
        sa.Column('name', sa.String(length=32), nullable=False),
        sa.Column('holder', sa.String(length=128), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_scheduler_lease')),
    )
    op.create_table(
        'statement_send',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('partner_id', sa.Integer(), nullable=False),
        sa.Column('week', sa.String(length=8), nullable=False),
        sa.Column('copy', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('message_id', sa.String(length=255), nullable=True),
        sa.Column('error', sa.String(length=1000), nullable=True),
        sa.Column(
            'created_at', sa.DateTime(timezone=True),
            server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False,
        ),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ['partner_id'], ['partner.id'], name=op.f('fk_statement_send_partner_id_partner')
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_statement_send')),
        sa.UniqueConstraint(
            'partner_id', 'week', 'copy', name=op.f('uq_statement_send_partner_id_week_copy')
        ),
    )


def downgrade() -> None:
    op.drop_table('statement_send')
    op.drop_table('scheduler_lease')
    with op.batch_alter_table('hub', schema=None) as batch_op:
        batch_op.drop_column('missed_grace_hours')
        batch_op.drop_column('report_hour')
        batch_op.drop_column('plan_hour')
        batch_op.drop_column('plan_day')
