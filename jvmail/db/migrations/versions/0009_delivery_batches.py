"""delivery batches: when each batch of a mailing was last enqueued and last claimed (the relay)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 13:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'delivery_batch',
        sa.Column('mailing_id', sa.Integer(), nullable=False),
        sa.Column('lo', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('hi', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ['mailing_id'], ['mailing.id'], name=op.f('fk_delivery_batch_mailing_id_mailing')
        ),
        sa.PrimaryKeyConstraint('mailing_id', 'lo', name=op.f('pk_delivery_batch')),
    )


def downgrade() -> None:
    op.drop_table('delivery_batch')
