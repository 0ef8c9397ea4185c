"""partner secret: provider secrets at rest, Fernet tokens bound to their partner and name

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 06:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'partner_secret',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('partner_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('token', sa.Text(), nullable=False),
        sa.Column(
            'created_at', sa.DateTime(timezone=True),
            server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False,
        ),
        sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ['partner_id'], ['partner.id'], name=op.f('fk_partner_secret_partner_id_partner')
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_partner_secret')),
        sa.UniqueConstraint('partner_id', 'name', name=op.f('uq_partner_secret_partner_id_name')),
    )


def downgrade() -> None:
    op.drop_table('partner_secret')
