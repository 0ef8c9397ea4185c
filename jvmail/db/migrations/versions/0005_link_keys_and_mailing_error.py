"""hub link keys and mailing error

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 09:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('hub', schema=None) as batch_op:
        batch_op.add_column(sa.Column('link_keys', sa.JSON(), server_default='[]', nullable=False))
    with op.batch_alter_table('mailing', schema=None) as batch_op:
        batch_op.add_column(sa.Column('error', sa.String(length=1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('mailing', schema=None) as batch_op:
        batch_op.drop_column('error')
    with op.batch_alter_table('hub', schema=None) as batch_op:
        batch_op.drop_column('link_keys')
