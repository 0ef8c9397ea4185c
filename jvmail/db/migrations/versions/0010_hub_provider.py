"""hub provider: the hub's own sending account (statements), synced from [hub.provider]

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('hub', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                'provider', sa.JSON(),
                server_default='{"kind": "outbox", "directory": "outbox"}', nullable=False,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table('hub', schema=None) as batch_op:
        batch_op.drop_column('provider')
