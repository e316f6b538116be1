"""The world accounts keep no balance on their row, so no movement locks or updates it.

Every top-up and every payout of a currency has its world account (``world:{currency}``) as
counterparty. While a posting moved the world row's ``balance``, all of them queued on that one
row until commit, and a payout whose transaction stalled before committing held up every other
top-up and payout of the currency (and ``INSERT … ON CONFLICT`` of the world account waited on
the row's pending update too). Ledgers treat such an external account as a "hot" account with
no stored balance; so does this one now:

* a posting to a world account leaves the row alone and records no ``balance_after`` (NULL);
  postings to every other account move its balance as before (the CHECK still refuses an
  overdraft, an unknown account is still a ``foreign_key_violation``);
* a world account's ``balance`` column stays 0 (a CHECK says so), and its existing postings
  lose their ``balance_after``, so the data says one thing.

A world account's balance is the sum of its postings, which is minus what every other account
of its currency holds (every transaction sums to zero per currency).

Downgrade restores the posting trigger of 0005 and recomputes each world balance, and each of
its postings' ``balance_after``, from its postings in id order.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-10
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# The triggers that refuse any change of a balance or a posting but through a new posting: off
# for this transaction's rewrite of the world's figures only (ALTER TABLE holds the tables'
# exclusive locks until commit, so no one else writes meanwhile).
_GUARDS = [
    ("ledger_accounts", "ledger_accounts_balance_by_postings"),
    ("postings", "postings_append_only"),
]

STATEMENTS = [
    """
    CREATE OR REPLACE FUNCTION ledger_apply_posting() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE ledger_accounts SET balance = balance + NEW.amount
        WHERE id = NEW.account_id AND kind <> 'world'
        RETURNING balance INTO NEW.balance_after;
        IF NOT FOUND THEN
            IF NOT EXISTS (SELECT FROM ledger_accounts
                           WHERE id = NEW.account_id AND kind = 'world') THEN
                RAISE EXCEPTION 'no ledger account %', NEW.account_id
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
            NEW.balance_after := NULL;
        END IF;
        RETURN NEW;
    END $$
    """,
    "ALTER TABLE postings ALTER COLUMN balance_after DROP NOT NULL",
    "ALTER TABLE postings ALTER COLUMN balance_after DROP DEFAULT",
    *(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}" for table, trigger in _GUARDS),
    "UPDATE ledger_accounts SET balance = 0 WHERE kind = 'world' AND balance <> 0",
    "UPDATE postings SET balance_after = NULL"
    " WHERE account_id IN (SELECT id FROM ledger_accounts WHERE kind = 'world')"
    " AND balance_after IS NOT NULL",
    *(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}" for table, trigger in _GUARDS),
    "ALTER TABLE ledger_accounts ADD CONSTRAINT ledger_accounts_world_balance_zero"
    " CHECK (kind <> 'world' OR balance = 0)",
]

DOWNGRADE = [
    """
    CREATE OR REPLACE FUNCTION ledger_apply_posting() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE ledger_accounts SET balance = balance + NEW.amount
        WHERE id = NEW.account_id
        RETURNING balance INTO NEW.balance_after;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no ledger account %', NEW.account_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    "ALTER TABLE ledger_accounts DROP CONSTRAINT IF EXISTS ledger_accounts_world_balance_zero",
    *(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}" for table, trigger in _GUARDS),
    """
    UPDATE ledger_accounts a SET balance = posted.total
    FROM (SELECT account_id, sum(amount) AS total FROM postings GROUP BY account_id) AS posted
    WHERE a.kind = 'world' AND posted.account_id = a.id
    """,
    """
    UPDATE postings p SET balance_after = running.balance
    FROM (SELECT q.id, sum(q.amount) OVER (PARTITION BY q.account_id ORDER BY q.id) AS balance
          FROM postings q JOIN ledger_accounts a ON a.id = q.account_id
          WHERE a.kind = 'world') AS running
    WHERE p.id = running.id
    """,
    *(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}" for table, trigger in _GUARDS),
    "ALTER TABLE postings ALTER COLUMN balance_after SET DEFAULT 0",
    "ALTER TABLE postings ALTER COLUMN balance_after SET NOT NULL",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
