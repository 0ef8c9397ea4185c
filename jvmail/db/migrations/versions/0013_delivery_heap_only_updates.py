"""delivery heap-only updates: no index on a delivery's status, room in each page for a row's
next version, and each batch's open flag and send tallies in its place

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 06:00:00.000000

A send updates every delivery row three times (claim, start, record). With an index on the
status, each update wrote a new entry in every index of the table; without one, and with room
left in the row's page (the fill factor), PostgreSQL rewrites the row in place of its page and
touches no index. The rows of a mailing in some state are now found through its batches' id
ranges: a batch is ``open`` while rows of it may be claimed, in flight or in doubt. Every batch
starts open here, so the first tick looks at all of them once and closes the settled ones. The
unfinished rows of a mailing dispatched before batches were recorded are cut into batches of
1,000 here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('delivery_batch', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('open', sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column('accepted', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('refused', sa.Integer(), server_default='0', nullable=False))
    op.execute(
        "INSERT INTO delivery_batch (mailing_id, lo, hi, enqueued_at, open)"
        " SELECT mailing_id, min(id), max(id), CURRENT_TIMESTAMP, true FROM ("
        "  SELECT mailing_id, id,"
        "   (row_number() OVER (PARTITION BY mailing_id ORDER BY id) - 1) / 1000 AS n"
        "  FROM delivery WHERE status IN ('pending', 'claimed', 'sending', 'unknown')"
        "  AND mailing_id NOT IN (SELECT mailing_id FROM delivery_batch)"
        " ) AS unbatched GROUP BY mailing_id, n"
    )
    op.execute("UPDATE delivery_batch SET open = true")
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_mailing_status')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE delivery SET (fillfactor = 50)')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE delivery RESET (fillfactor)')
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_mailing_status', ['mailing_id', 'status'], unique=False)
    with op.batch_alter_table('delivery_batch', schema=None) as batch_op:
        batch_op.drop_column('refused')
        batch_op.drop_column('accepted')
        batch_op.drop_column('open')
