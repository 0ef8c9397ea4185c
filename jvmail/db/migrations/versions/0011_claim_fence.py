"""claim fence: one fencing token per claim, drawn from a sequence on PostgreSQL

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 15:00:00.000000

A claim stamps every row it takes with the same new fence, so a worker's later statements match
its rows by (fence, id range) instead of one (id, fence) pair per row. On PostgreSQL the fence
comes from the ``delivery_fence`` sequence, started above every fence already handed out (a
worker that claimed before the upgrade must not find its fence reused). SQLite needs nothing:
its writers take turns, so a claim draws one more than the largest fence of its batch's rows.
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('CREATE SEQUENCE delivery_fence AS integer')
    op.execute(
        "SELECT setval('delivery_fence', COALESCE((SELECT max(fence) FROM delivery), 0) + 1, false)"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP SEQUENCE delivery_fence')
