"""delivery heap-only updates: no index on a delivery's status, room in each page for a row's
next version, and each batch's open flag and send tallies in its place

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 06:00:00.000000

A send updates every delivery row three times (claim, start, record). With an index on the
status, each update wrote a new entry in every index of the table; without one, and with room
left in the row's page (the fill factor), PostgreSQL rewrites the row in place of its page and
touches no index. The rows of a mailing in some state are now found through its batches' id
ranges: a batch is ``open`` from its first claim until its rows are all final. Here the batches
with rows not yet final are opened and every batch gets its tallies of accepted and refused
rows; the unfinished rows of a mailing dispatched before batches were recorded are cut into
batches of 1,000 first.
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
    in_batch = (
        "FROM delivery d WHERE d.id BETWEEN delivery_batch.lo AND delivery_batch.hi"
        " AND d.mailing_id = delivery_batch.mailing_id"
    )
    op.execute(
        "UPDATE delivery_batch SET"
        f" open = EXISTS (SELECT 1 {in_batch} AND d.status NOT IN ('accepted', 'failed',"
        " 'suppressed', 'dead')),"
        f" accepted = (SELECT count(*) {in_batch} AND d.status = 'accepted'),"
        f" refused = (SELECT count(*) {in_batch} AND d.status = 'failed')"
    )
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
